"""The `<family>/annotations` assets: one daily partition per UTC day of judgments."""
