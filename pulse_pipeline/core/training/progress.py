"""How training progress reads: one log line, or a progress bar on a terminal."""

from __future__ import annotations

import sys

from pulse_pipeline.core.training.recipe import Progress


def progress_line(p: Progress) -> str:
    return (
        f"step {p.step}/{p.total_steps} epoch {p.epoch}/{p.epochs} loss {p.loss:.4f} "
        f"lr {p.learning_rate:.2e} {p.tokens_per_second:,.0f} tokens/s ETA {p.eta_seconds:,.0f} s"
    )


class ProgressBar:
    """A tqdm bar on stderr: step, epoch, loss, tokens/s and tqdm's own ETA. Where stderr is not
    a terminal, plain progress lines instead (`lines_when_not_a_terminal`)."""

    def __init__(self, *, lines_when_not_a_terminal: bool = True):
        from tqdm import tqdm

        self.bar = tqdm(unit="step", dynamic_ncols=True, disable=None)  # None: off when not a TTY
        self.lines = lines_when_not_a_terminal

    def __call__(self, p: Progress) -> None:
        if self.bar.disable:
            if self.lines:
                print(progress_line(p), file=sys.stderr, flush=True)
            return
        self.bar.total, self.bar.n = p.total_steps, p.step
        self.bar.set_postfix(
            epoch=f"{p.epoch}/{p.epochs}",
            loss=f"{p.loss:.4f}",
            tok_s=f"{p.tokens_per_second:,.0f}",
            refresh=False,
        )
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
