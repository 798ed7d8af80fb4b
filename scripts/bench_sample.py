"""Sampling speed: `python scripts/bench.py sample [--models tiny,small,voice_2016] [--streams 1,16] ...`.

First the presets of `--presets` at one stream, each in --preset-processes fresh processes taking turns: the
frame-level ones against the flat ones their targets name (voice_cpu_tiered >= 3x voice_cpu, samplernn >= 2x
voice_2016), in `presets.ratios` (of the medians, and round by round). A preset's params are its random init,
or, written `PRESET=RUN`, the latest checkpoint of a run trained with it (e.g. the run directories `bench.py
quality` leaves): what a user samples. A trained model can sample at another speed than its init: the tiered
sample MLP's products read only the rows of inputs its ReLUs left nonzero: ~1/2 at init, ~1/4-1/10 trained.
The i-th entry of a frame-level preset pairs with the i-th of its flat one, of the same kind (at init, or
trained). Then:

For each model (random init params), weight dtype (--weights: float32, and bfloat16 as `jaxvoice sample
--weights bfloat16` runs it) and stream count: samples/s and real-time factor (seconds of 11025 Hz
audio per second of wall time) of `jaxvoice.sample.generate`, timed after compilation, median of
--repeats runs of at least --samples samples. Beside it, in the same process:
- gemv: the bare cost of one step's matrix-vector products (layer 0's recurrent GEMV, each higher layer's
  [x, h] GEMV, the output GEMV) in a jitted scan of only those products, in the faster of the two weight
  layouts and the same weight dtype, and the sampler's step time over it;
- torch (when it imports): the loop users write, one `nn.LSTM` step per sample with
  `torch.multinomial(softmax(logits / T))`, at 1 stream, and jaxvoice's speed-up over it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

MODELS = {  # cell, rnn_size, num_layers, wordvec_size
    "tiny": (128, 1, 32),
    "small": (256, 2, 64),
    "voice_2016": (680, 3, 110),
}
RATE = 11025


def _median_run(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def bench_generate(
    cfg, streams: int, samples: int, repeats: int, chunk: int, weights: str, params=None
) -> dict:
    """`sample.generate`'s speed for `params` (default: the model's random init)."""
    import jax

    from jaxvoice import model, sample

    if params is None:
        params = model.init_params(jax.random.key(0), cfg)
    steps = -(-samples // streams)
    steps = -(-steps // chunk) * chunk  # whole chunks: what is timed is what runs
    key = jax.random.key(1)

    def run(length=steps):
        for _ in sample.generate(
            params, cfg, key, length=length, num_streams=streams, chunk=chunk, weights=weights
        ):
            pass

    t0 = time.perf_counter()
    run(chunk)  # compile
    first_chunk = time.perf_counter() - t0
    # A chunk after the first can compile again: the carry it starts from comes out of a chunk, not from
    # the init (0.7 s for a restored voice_cpu_tiered checkpoint on a Zen 4), so two chunks warm up.
    run(2 * chunk)
    seconds, times = _median_run(run, repeats)
    rate = steps * streams / seconds
    return {
        "streams": streams,
        "weights": weights,
        "samples": steps * streams,
        "seconds": round(seconds, 3),
        "seconds_all": [round(t, 3) for t in times],
        "samples_per_s": round(rate),
        "real_time_factor": round(rate / RATE, 3),
        "us_per_step": round(seconds / steps * 1e6, 2),
        "first_chunk_s": round(first_chunk, 2),  # compilation included
    }


def bench_gemv(cfg, streams: int, steps: int, repeats: int, weights: str = "float32") -> dict:
    """One step's matrix-vector products only, chained through a tanh of H values so none is hoisted and the
    values stay normal floats; in the fastest weight layout: [in, out], [out, in], or packed for jaxvoice's
    CPU kernel where it is built (the sampler picks among the same three)."""
    from jaxvoice import packed_matmul

    layouts = ["[in, out]", "[out, in]"] + (["packed"] if packed_matmul.available() else [])
    every = [_bench_gemv(cfg, streams, steps, repeats, weights, layout) for layout in layouts]
    return min(every, key=lambda r: r["us_per_step"])


def _bench_gemv(cfg, streams: int, steps: int, repeats: int, weights: str, layout_name: str) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxvoice import sample, stored

    # stored and multiplied exactly as the sampler does it
    layout = sample.Layout(
        transposed=layout_name == "[out, in]", weights=weights, packed=layout_name == "packed"
    )
    H, G, L = cfg.rnn_size, 4 * cfg.rnn_size, cfg.num_layers
    keys = jax.random.split(jax.random.key(0), L + 1)
    mats = [jax.random.normal(keys[0], (H, G), jnp.float32) / H]
    mats += [jax.random.normal(keys[i], (2 * H, G), jnp.float32) / H for i in range(1, L)]
    out = jax.random.normal(keys[L], (H, 256), jnp.float32) / H
    count = sum(m.size for m in mats) + out.size
    mats = [sample.stored_weight(m, layout) for m in mats]
    out = sample.stored_weight(out, layout)

    @jax.jit
    def run(mats, out, h_BxH):
        def body(h_BxH, _):
            x_BxH = h_BxH
            for i, w in enumerate(mats):
                inp = h_BxH if i == 0 else jnp.concatenate([x_BxH, h_BxH], axis=-1)
                # every output of the product is used (else XLA computes only the used columns)
                x_BxH = jnp.tanh(stored.product(inp, w).reshape(-1, 4, H).sum(axis=1))
            logits_BxV = stored.product(x_BxH, out)
            return jnp.tanh(x_BxH + logits_BxV.sum(axis=-1, keepdims=True)), None

        return jax.lax.scan(body, h_BxH, None, length=steps)[0]

    h = jnp.ones((streams, H), jnp.float32)
    run(mats, out, h).block_until_ready()
    seconds, _ = _median_run(lambda: run(mats, out, h).block_until_ready(), repeats)
    flops = 2 * streams * count
    return {
        "streams": streams,
        "weights": weights,
        "layout": layout_name,
        "us_per_step": round(seconds / steps * 1e6, 2),
        "weight_mb": round(count * jnp.dtype(weights).itemsize / 1e6, 1),
        "gflop_per_s": round(flops * steps / seconds / 1e9, 1),
    }


def torch_loop(cfg, samples: int, max_seconds: float, threads: int, temperature: float = 1.0) -> dict:
    """The loop users write: one `nn.LSTM` call per sample, `torch.multinomial(softmax(logits / T))`."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    embed = torch.nn.Embedding(256, cfg.wordvec_size)
    lstm = torch.nn.LSTM(cfg.wordvec_size, cfg.rnn_size, cfg.num_layers, batch_first=True)
    out = torch.nn.Linear(cfg.rnn_size, 256)
    token = torch.tensor([[128]])
    state = None
    done = 0
    with torch.no_grad():
        for _ in range(20):  # warm-up
            y, state = lstm(embed(token), state)
            token = torch.multinomial(torch.softmax(out(y[:, -1]) / temperature, -1), 1)
        t0 = time.perf_counter()
        while done < samples and (done % 50 or time.perf_counter() - t0 < max_seconds):
            y, state = lstm(embed(token), state)
            token = torch.multinomial(torch.softmax(out(y[:, -1]) / temperature, -1), 1)
            done += 1
        seconds = time.perf_counter() - t0
    return {
        "streams": 1,
        "samples": done,
        "seconds": round(seconds, 3),
        "samples_per_s": round(done / seconds),
        "real_time_factor": round(done / seconds / RATE, 3),
        "threads": torch.get_num_threads(),
        "version": torch.__version__,
    }


def bench_torch(name: str, samples: int, max_seconds: float, threads: int = 0) -> dict | None:
    """torch_loop in a fresh process (no JAX thread pool beside it); None when torch is not installed.
    threads 0: torch's default (what users get); 1: one thread, often faster for one small step."""
    if importlib.util.find_spec("torch") is None:
        return None
    proc = subprocess.run(
        [sys.executable, __file__, "--torch-child", name, str(samples), str(max_seconds), str(threads)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(proc.stdout)


# Model families side by side, as their presets define them: each frame-level preset against the flat one
# its targets name (samples/s at 1 stream, float32 weights; random params, or a run's trained ones).
FAMILY_PAIRS = {"voice_cpu_tiered": ("voice_cpu", 3.0), "samplernn": ("voice_2016", 2.0)}


def _entry(entry: str) -> tuple[str, str]:
    """(preset, run directory or '') of a `--presets` entry, `PRESET` or `PRESET=RUN`."""
    preset, _, run_dir = entry.partition("=")
    return preset, run_dir


def preset_speed(entry: str, samples: int, repeats: int, chunk: int) -> int:
    """Samples/s at 1 stream, float32 weights (`bench_generate`) of `PRESET` at its random init, or of
    `PRESET=RUN`: the latest checkpoint of run directory RUN, trained with that preset."""
    from jaxvoice import checkpoint, config

    preset, run_dir = _entry(entry)
    if run_dir:
        restored = checkpoint.restore_for_inference(run_dir, "latest")
        cfg, params = restored.config.model, restored.params
    else:
        cfg, params = config.load(preset).model, None
    return bench_generate(cfg, 1, samples, repeats, chunk, "float32", params)["samples_per_s"]


def _pairs(names: list[str]) -> list[tuple[str, str, float]]:
    """(frame-level entry, flat entry, target): the i-th entry of a frame-level preset paired with the i-th of
    the flat preset its target names, of the same kind (at init, or trained: `PRESET=RUN`), so that
    `voice_cpu=A,voice_cpu_tiered=B,voice_cpu=C,voice_cpu_tiered=D` pairs B with A and D with C."""
    pairs = []
    for tiered_preset, (flat_preset, target) in FAMILY_PAIRS.items():
        for trained in (False, True):
            tiered, flat = (
                [n for n in names if _entry(n)[0] == preset and bool(_entry(n)[1]) == trained]
                for preset in (tiered_preset, flat_preset)
            )
            pairs += [(t, f, target) for t, f in zip(tiered, flat, strict=False)]  # the unpaired left out
    return pairs


def bench_presets(names: list[str], samples: int, repeats: int, chunk: int, processes: int = 1) -> dict:
    """Each preset's 1-stream speed in `processes` fresh processes, the presets taking turns (round r starts at
    preset r), and the ratios of the pairs' medians, with each round's own ratio: on these VMs one process's
    rate moves by up to 1.6x from the next's, so one process per preset decides little."""
    if len(set(names)) < len(names):  # the results are keyed by entry
        raise SystemExit(f"--presets names an entry twice ({','.join(names)}); give each once")
    runs = {name: [] for name in names}
    for r in range(processes):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            proc = subprocess.run(
                [sys.executable, __file__, "--preset-child", name, str(samples), str(repeats), str(chunk)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            runs[name].append(int(proc.stdout.strip().splitlines()[-1]))
    medians = {n: round(statistics.median(v)) for n, v in runs.items()}
    ratios = {
        f"{tiered}/{flat}": {
            "ratio": round(medians[tiered] / medians[flat], 2),
            "rounds": [round(t / f, 2) for t, f in zip(runs[tiered], runs[flat], strict=True)],
            "target": target,
        }
        for tiered, flat, target in _pairs(names)
    }
    return {"samples_per_s_1_stream": medians, "processes": runs, "ratios": ratios}


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="bench.py sample")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--streams", default="1,16")
    parser.add_argument("--samples", type=int, default=20_000, help="at least this many per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=None, help="steps per chunk (default: sample's)")
    parser.add_argument(
        "--weights", default="float32,bfloat16", help="sampling weight dtypes (jaxvoice sample --weights)"
    )
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--torch-seconds", type=float, default=30.0, help="time cap of one torch loop")
    parser.add_argument(
        "--presets", default="voice_cpu,voice_cpu_tiered,voice_2016,samplernn",
        help="presets compared at 1 stream (model families against the flat stack), each PRESET (random init) "
        "or PRESET=RUN (a run's latest checkpoint); '' for none",
    )  # fmt: skip
    parser.add_argument("--preset-processes", type=int, default=3, help="fresh processes per preset")
    args = parser.parse_args(argv)

    import jax

    from jaxvoice import sample
    from jaxvoice.config import ModelConfig

    chunk = args.chunk or sample.DEFAULT_CHUNK
    result = {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "chunk": chunk,
        "models": {},
    }
    if args.presets:
        result["presets"] = bench_presets(
            args.presets.split(","), args.samples, args.repeats, chunk, args.preset_processes
        )
    for name in (m for m in args.models.split(",") if m):
        H, L, E = MODELS[name]
        cfg = ModelConfig(cell="lstm", rnn_size=H, num_layers=L, wordvec_size=E)
        entry = {"config": f"LSTM {L}x{H}, wordvec {E}", "jaxvoice": [], "gemv": []}
        for weights in args.weights.split(","):
            for streams in map(int, args.streams.split(",")):
                gen = bench_generate(cfg, streams, args.samples, args.repeats, chunk, weights)
                bare = bench_gemv(cfg, streams, 4096, args.repeats, weights)
                gen["step_over_gemv"] = round(gen["us_per_step"] / bare["us_per_step"], 2)
                entry["jaxvoice"].append(gen)
                entry["gemv"].append(bare)
        result["models"][name] = entry
    for name, entry in result["models"].items() if not args.no_torch else ():
        torch_result = bench_torch(name, args.samples, args.torch_seconds)
        if torch_result is None:
            break
        entry["torch_loop"] = torch_result
        entry["torch_loop_1_thread"] = bench_torch(name, args.samples, args.torch_seconds, threads=1)
        best = max(torch_result["samples_per_s"], entry["torch_loop_1_thread"]["samples_per_s"])
        one = next((g for g in entry["jaxvoice"] if g["streams"] == 1 and g["weights"] == "float32"), None)
        if one is not None:  # against the faster of the two torch loops
            entry["speedup_vs_torch_1_stream"] = round(one["samples_per_s"] / best, 1)
    return result


if __name__ == "__main__" and sys.argv[1:2] == ["--preset-child"]:
    print(preset_speed(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])))
elif __name__ == "__main__" and sys.argv[1:2] == ["--torch-child"]:
    H, L, E = MODELS[sys.argv[2]]
    shape = SimpleNamespace(rnn_size=H, num_layers=L, wordvec_size=E)
    print(json.dumps(torch_loop(shape, int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]))))
