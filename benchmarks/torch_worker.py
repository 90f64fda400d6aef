"""The PyTorch side of `launch/benchmark.py`, in a process of its own so that its steps interleave with JAX's.

  python -u benchmarks/torch_worker.py '[[M_ARENA_MAX, 1], ...]'   # by an interpreter with torch and numpy

The argument is the list of (param, value) pairs for glibc's mallopt (`copper_jax.host_memory.SETTINGS`, or [] to
leave the allocator alone), applied before torch loads. Then it reads one JSON request per line on stdin and
answers each with one JSON line on stdout:
  {"op": "hello"}                                  -> {"torch": version, "threads": n}
  {"op": "train", "id": i, "args": {kind, c, d, n, N, batch, patch}}
                                                   -> {"first_s": s, "params": count}; then 2 more warm-up steps
  {"op": "infer", "id": i, "args": {c, d, n, N, height, width}}   -> {"first_s": s, "params": count}
  {"op": "conv", "id": i, "args": {batch, size, c, which}}        -> {"first_s": s}
  {"op": "run", "id": i, "steps": k}               -> {"seconds": wall time of k steps of bench i}
A failed request answers {"error": "..."}; the worker goes on. It ends when stdin closes. The models and benches
are in `torch_nets.py`, beside this file.
"""
import ctypes
import json
import os
import sys

if __name__ == "__main__":
  for _param, _value in json.loads(sys.argv[1] if len(sys.argv) > 1 else "[]"):
    ctypes.CDLL("libc.so.6").mallopt(_param, _value)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402

import torch_nets  # noqa: E402

TRAIN_WARMUP_STEPS = 3  # the first step, answered with its time, and 2 more


def handle(command: dict, benches: dict) -> dict:
  op = command["op"]
  if op == "hello":
    return {"torch": torch.__version__, "threads": torch.get_num_threads()}
  if op == "run":
    return {"seconds": benches[command["id"]].run(command["steps"])}
  a = command["args"]
  if op == "train":
    bench = torch_nets.TrainBench(a["kind"], a["c"], a["d"], a["n"], a["N"], a["batch"], a["patch"])
    reply = {"first_s": bench.run(1), "params": torch_nets.param_count(bench.model)}
    bench.run(TRAIN_WARMUP_STEPS - 1)
  elif op == "infer":
    bench = torch_nets.InferBench(a["c"], a["d"], a["n"], a["N"], a["height"], a["width"])
    reply = {"first_s": bench.run(1), "params": torch_nets.param_count(bench.model)}
  elif op == "conv":
    bench = torch_nets.ConvPass(a["batch"], a["size"], a["c"], a["which"])
    reply = {"first_s": bench.run(1)}
  else:
    raise ValueError(f"op {op!r}; valid values: hello, train, infer, conv, run")
  benches[command["id"]] = bench
  return reply


def main() -> None:
  torch.set_num_threads(os.cpu_count())
  benches = {}
  for line in sys.stdin:
    try:
      reply = handle(json.loads(line), benches)
    except Exception as e:  # noqa: BLE001 - reported to the caller, which raises it
      reply = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(reply), flush=True)


if __name__ == "__main__":
  main()
