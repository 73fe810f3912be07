"""What logging a GRPO step's ~22 metrics costs: Lightning's ``log_dict`` against the direct path.

``GRPOModule._log_step_metrics`` puts the step's means into ``trainer.callback_metrics`` and,
on logging steps, hands them to the logger connector; ``self.log_dict(..., on_step=True)`` does
the same through Lightning's result collection. Both run here inside a real ``Trainer.fit``
with a CSV logger and a module that does nothing else, so the difference is the logging alone.

    python benchmarks/bench_logging.py                 # 22 metrics, 300 steps, 1 thread
    python benchmarks/bench_logging.py --metrics 40
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings

import common
import lightning as L
import torch

from grpo_lightning.module import GRPOModule


class LoggingOnly(L.LightningModule):
    def __init__(self, num_metrics: int, direct: bool):
        super().__init__()
        self.automatic_optimization = False
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.names = [f"stage/metric_{index}" for index in range(num_metrics)]
        self.direct = direct
        self.seconds: list[float] = []

    def training_step(self, batch, batch_idx):
        metrics = {name: torch.tensor(float(index)) for index, name in enumerate(self.names)}
        started = time.perf_counter()
        if self.direct:
            GRPOModule._log_step_metrics(self, metrics)
        else:
            self.log_dict(metrics, on_step=True, on_epoch=False)
        self.seconds.append(time.perf_counter() - started)
        self.optimizers().step()  # under manual optimization, global_step counts these

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(list(range(100_000)), batch_size=1)


def run(num_metrics: int, steps: int, direct: bool) -> float:
    module = LoggingOnly(num_metrics, direct)
    with tempfile.TemporaryDirectory() as directory:
        trainer = L.Trainer(
            max_steps=steps,
            logger=L.pytorch.loggers.CSVLogger(directory),
            log_every_n_steps=1,
            enable_progress_bar=False,
            enable_checkpointing=False,
            enable_model_summary=False,
        )
        trainer.fit(module)
    return statistics.median(module.seconds[steps // 10 :])


def main() -> None:
    parser = common.make_parser(__doc__)
    parser.add_argument("--metrics", type=int, default=22)
    parser.add_argument("--steps", type=int, default=300)
    common.add_threads(parser)
    args = parser.parse_args()
    common.set_threads(args.threads)
    warnings.filterwarnings("ignore")
    lightning_s = run(args.metrics, args.steps, direct=False)
    direct_s = run(args.metrics, args.steps, direct=True)
    print(
        f"{args.metrics} metrics per step, median over {args.steps} steps: log_dict {lightning_s * 1e3:.2f} ms, "
        f"direct {direct_s * 1e3:.2f} ms ({lightning_s / direct_s:.0f}x)"
    )


if __name__ == "__main__":
    main()
