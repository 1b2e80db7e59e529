"""Registry: the production pointer per family, promotion, rollback and cleanup jobs, serving."""
