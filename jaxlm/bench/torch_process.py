"""The PyTorch reference's train step in a process of its own.

The child keeps its freed memory for reuse as jaxlm does on the CPU (`jaxlm.host_memory`: no
memory mappings, no trimming), so that neither framework pays for faulting its step's pages in
again: with glibc's defaults PyTorch's bfloat16 demo step faults in 49,000 pages and takes
about 1.2x as long. Only jaxlm's single malloc arena is left out, which slows PyTorch's bfloat16
autocast step by about 1.7x. The child is spawned (a fresh interpreter), builds the reference
GPT from jaxlm's initial weights and runs blocks of steps on request, measuring them itself
(`jaxlm.bench.measure`).
"""

from __future__ import annotations

import multiprocessing

import numpy as np

from jaxlm.bench.measure import measure_steps, threads
from jaxlm.errors import JaxlmError
from jaxlm.host_memory import keep_freed_memory


class TorchProcess:
    """Runner for `jaxlm.bench.harness`: `run(count)` trains `count` steps in the child."""

    name = "pytorch"
    compile_seconds = None

    def __init__(self, cfg, batch: dict[str, np.ndarray], params, learning_rates: list[float]):
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=serve, args=(child,), daemon=True)
        self.process.start()
        child.close()
        inputs = {k: batch[k] for k in ("inputs", "targets")}
        self._request((cfg.model, cfg.optim, inputs, params, learning_rates, threads()))

    def _request(self, message):
        try:
            self.connection.send(message)
            reply = self.connection.recv()
        except (EOFError, OSError):
            raise JaxlmError(
                f"the PyTorch reference process exited (code {self.process.exitcode})"
            ) from None
        if isinstance(reply, str):
            raise JaxlmError(f"the PyTorch reference process failed: {reply}")
        return reply

    def run(self, count: int) -> dict:
        return self._request(count)

    def device_peak_bytes(self) -> None:
        return None

    def close(self) -> None:
        if self.process.is_alive():
            self.connection.send(None)
            self.process.join(timeout=30)
        self.connection.close()


def serve(connection) -> None:
    """The child: set up from the first message, then run step counts until None."""
    keep_freed_memory(one_arena=False)
    try:
        import torch

        from jaxlm.bench import torch_gpt

        model_cfg, optim, batch, params, learning_rates, thread_count = connection.recv()
        torch.set_num_threads(thread_count)
        model = torch_gpt.TorchGPT(torch_gpt.GPTConfig.from_model_config(model_cfg))
        torch_gpt.load_jaxlm_params(model, params)
        autocast = None if model_cfg.dtype == "float32" else getattr(torch, model_cfg.dtype)
        trainer = torch_gpt.TorchTrainer(model, optim, learning_rates, autocast=autocast)
        inputs, targets = (
            torch.from_numpy(batch[k].astype(np.int64)) for k in ("inputs", "targets")
        )
        connection.send({})
        while (count := connection.recv()) is not None:
            connection.send(measure_steps(lambda: trainer.step(inputs, targets), count))
    except Exception as e:  # reported to the parent as a one-line error
        connection.send(f"{type(e).__name__}: {e}")
    finally:
        connection.close()
