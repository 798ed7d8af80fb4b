"""Training speed: `python scripts/bench.py train [--presets tiny,small,voice_2016] [--processes 3] ...`.

Frame-level presets (e.g. `--presets voice_cpu_tiered,samplernn`) get the jax and gemm sides: their GEMMs
are the frame tier's (over T / frame_size steps), the upsampling's, the sample level's and the output's.

What is timed, per preset, in --processes fresh subprocesses (timings here are bimodal from one process to
the next, and the machine may be shared: see docs/performance.md). Inside each process the sides take
turns, one timed window of about --seconds each, for --rounds rounds, so every side sees the same machine
state (each window after one untimed step: the first step after a switch of sides is slow, and a training
loop never switches); ratios are taken window pair by window pair, and we quote medians and ranges:
- jax: the training step users run, `jaxvoice.train.make_train_step` (value_and_grad of model.loss,
  elementwise clip 5, Adam 2e-3, jitted once with the state donated, the hidden state carried from step to
  step) over random byte batches; metrics are fetched only at the end of each window. Also: compile
  seconds (trace + lower + compile, before anything else runs) and peak RSS.
- gemm: one jitted function doing only the GEMMs of a training step, with the model's shapes, forward and
  backward: the B*T x I by I x G input projections, the output layer, dW_h as one GEMM over all steps, and
  the T recurrent B x H by H x G products and their transposes in a scan. `fraction_of_gemm_rate` =
  (model FLOPs / step time) / (the same FLOPs / GEMM-only time) = GEMM-only time / step time.
- torch (if it imports): the idiomatic char-rnn, nn.Embedding -> nn.LSTM(batch_first) -> nn.Linear, Adam,
  cross-entropy, grad clamp 5, the hidden state detached and carried; eager (oneDNN's fused LSTM).

Children get GLIBC_TUNABLES=glibc.malloc.hugetlb=1 unless --hugetlb off (both sides alike): it removes
most page faults from the big per-step buffers of XLA and torch (docs/performance.md: +14-24%). `--hugetlb both`
runs every process both ways and reports each.
Development: `--variant NAME=DIR` also times DIR/jaxvoice/model.py (another checkout's model) under the
bench's own train step, and `--own` the installed model under that same step, for side-by-side A/B runs.
`--paired-set KEY=VALUE` (repeatable) also times the user's step with that config override in the same
processes, turn by turn with the preset as it is, and reports `ratio_vs_jax` pair by pair: on a shared VM
two presets' separate processes can differ more than the change being measured (docs/performance.md,
2026-12-03: unpaired, bfloat16 read 0.87x float32; paired, 1.22-1.26x).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PRESETS = ["tiny", "small", "voice_2016"]
PAIRED = "set:"  # a side that is the preset with one config override (--paired-set)
HUGETLB = "glibc.malloc.hugetlb=1"
V = 256


def _batches(B: int, T: int, count: int, seed: int = 0):
    import numpy as np

    data = np.random.default_rng(seed).integers(0, V, size=(count, B, T + 1), dtype=np.uint8)
    return [(d[:, :-1], d[:, 1:]) for d in data]


GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # the built-in cells' gate rows per unit (G = GATES * H)


def _layer_shapes(prefix: str, steps: int, B: int, ins: int, H: int, G: int, input_grad: bool) -> list:
    """(name, count, m, k, n) of one recurrent layer over `steps` steps of B streams: its input projection
    as one GEMM, the recurrent products step by step, and their gradients."""
    rows = B * steps
    shapes = [
        (f"{prefix}_x_fwd", 1, rows, ins, G),  # X @ Wx
        (f"{prefix}_x_dW", 1, ins, rows, G),  # X.T @ dPre
        (f"{prefix}_h_fwd", steps, B, H, G),  # h @ Wh, per step
        (f"{prefix}_h_dX", steps, B, G, H),  # dPre @ Wh.T, per step
        (f"{prefix}_h_dW", 1, H, rows, G),  # H_prev.T @ dPre over all steps
    ]
    if input_grad:
        shapes.insert(1, (f"{prefix}_x_dX", 1, rows, G, ins))  # dPre @ Wx.T
    return shapes


def _dense_shapes(name: str, rows: int, ins: int, outs: int) -> list:
    return [
        (f"{name}_fwd", 1, rows, ins, outs),
        (f"{name}_dX", 1, rows, outs, ins),
        (f"{name}_dW", 1, ins, rows, outs),
    ]


def gemm_shapes(cfg) -> list[tuple[str, int, int, int, int]] | None:
    """(name, count, m, k, n) of every GEMM of one training step, forward and backward; None for a cell
    whose shapes the bench does not know."""
    m, t = cfg.model, cfg.train
    if m.cell not in GATES:
        return None
    H, B, T = m.rnn_size, t.batch_size, t.seq_length
    G = GATES[m.cell] * H
    if m.kind != "tiered":
        shapes = []
        for layer in range(m.num_layers):
            ins = m.wordvec_size if layer == 0 else H
            shapes += _layer_shapes(f"l{layer}", T, B, ins, H, G, input_grad=True)
        return shapes + _dense_shapes("out", B * T, H, V)
    # The frame tier over T / F frames, the upsampling to F vectors of D, the sample level over T; with
    # 3 tiers first the top tier over T / L steps and its upsampling to R = L / F vectors of H.
    F, E, D = m.frame_size, m.wordvec_size, m.sample_size
    per_sample = E if m.frame_input == "embedded" else 1
    shapes = []
    per_position = m.upsampling != "shared"  # shared: one map, then a broadcast add of the position biases
    tiers = [("frame", F, H if m.tiers == 3 else 0, "up", (F if per_position else 1) * D)]
    if m.tiers == 3:
        R = m.top_frame_size // F
        tiers.insert(0, ("top", m.top_frame_size, 0, "top_up", (R if per_position else 1) * H))
    for name, frame, above, up, up_out in tiers:
        for layer in range(m.num_layers):
            ins = frame * per_sample + above if layer == 0 else H
            input_grad = layer > 0 or m.frame_input == "embedded" or above > 0
            shapes += _layer_shapes(f"{name}{layer}", T // frame, B, ins, H, G, input_grad=input_grad)
        shapes += _dense_shapes(up, B * (T // frame), H, up_out)
    from jaxvoice import sample_level

    per_input = sample_level.input_size(m)
    if m.sample_level == "mlp":
        mlp_in = _dense_shapes("mlp_in", B * T, F * per_input, D)
        # values alone need no input gradient (embeddings do)
        shapes += mlp_in if m.sample_input != "scaled" else [s for s in mlp_in if s[0] != "mlp_in_dX"]
        for layer in range(m.sample_layers - 1):
            shapes += _dense_shapes(f"mlp{layer}", B * T, D, D)
    else:
        shapes += _layer_shapes("sample", T, B, per_input + D, D, GATES[m.cell] * D, input_grad=True)
    return shapes + _dense_shapes("out", B * T, D, V)


def model_flops(cfg) -> float | None:
    shapes = gemm_shapes(cfg)
    return None if shapes is None else float(sum(2.0 * c * m * k * n for _, c, m, k, n in shapes))


# --- the sides: each is (name, run(n_steps) -> None that blocks at the end, tokens per step) ------------


def _jax_train_side(cfg, model_module=None):
    """The user's step (jaxvoice.train) when model_module is None and train has it; else the bench's own
    equivalent step over `model_module` (or the installed model)."""
    import jax
    import optax

    from jaxvoice import model as installed_model
    from jaxvoice import train

    B, T = cfg.train.batch_size, cfg.train.seq_length
    steps_per_epoch = 100_000  # the carry is reset at step 0 only; lr decays after 5 epochs
    if model_module is None and hasattr(train, "make_train_step") and hasattr(train, "init_state"):
        step_fn = train.make_train_step(cfg, steps_per_epoch)
        state = train.init_state(cfg, steps_per_epoch, B)
    else:
        mdl = model_module or installed_model
        optimizer = optax.chain(optax.clip(cfg.train.grad_clip), optax.adam(cfg.train.learning_rate))

        def step(state, inputs_BxT, targets_BxT):
            params, opt_state, carry = state
            (nats, carry), grads = jax.value_and_grad(mdl.loss, has_aux=True)(
                params, inputs_BxT, targets_BxT, carry, cfg.model
            )
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state, carry), {"loss": nats}

        params = mdl.init_params(jax.random.key(0), cfg.model)
        state = (params, optimizer.init(params), mdl.init_carry(cfg.model, B))
        step_fn = jax.jit(step, donate_argnums=0)
    batches = [tuple(jax.device_put(a) for a in b) for b in _batches(B, T, 8)]
    t0 = time.perf_counter()
    step_fn.lower(state, *batches[0]).compile()
    compile_s = time.perf_counter() - t0
    box = {"state": state, "metrics": None, "cursor": 0}

    def run(n):
        for _ in range(n):
            box["state"], box["metrics"] = step_fn(box["state"], *batches[box["cursor"] % len(batches)])
            box["cursor"] += 1
        jax.block_until_ready((box["state"], box["metrics"]))

    run(2)
    return run, B * T, {"compile_s": compile_s, "loss": lambda: float(box["metrics"]["loss"])}


def _gemm_side(cfg):
    """Only the GEMMs of one training step, jitted as one function (see the module docstring)."""
    import jax
    import jax.numpy as jnp

    B, T = cfg.train.batch_size, cfg.train.seq_length
    keys = iter(jax.random.split(jax.random.key(0), 256))
    shapes = gemm_shapes(cfg)
    flat = [(name, mm, k, n) for name, c, mm, k, n in shapes if "_h_fwd" not in name and "_h_dX" not in name]
    args = [
        (jax.random.normal(next(keys), (mm, k)), jax.random.normal(next(keys), (k, n)))
        for _, mm, k, n in flat
    ]
    # Each recurrent layer: `steps` times h @ Wh then dPre @ Wh.T, with its own Wh and h0 (identical scans
    # would be merged into one by XLA's CSE: it did, when they were shared).
    loops = [(c, mm, k, n) for name, c, mm, k, n in shapes if "_h_fwd" in name]
    wh = [jax.random.normal(next(keys), (k, n), jnp.float32) * (k * n) ** -0.25 for _, _, k, n in loops]
    h0 = [jax.random.normal(next(keys), (mm, k), jnp.float32) for _, mm, k, _ in loops]
    lengths = [c for c, _, _, _ in loops]

    def gemms(args, wh, h0):
        outs = [a @ b for a, b in args]
        for wh_HxG, h_BxH, length in zip(wh, h0, lengths, strict=True):

            def body(h, _, wh_HxG=wh_HxG):
                return (h @ wh_HxG) @ wh_HxG.T, None  # keeps the scale: Wh is scaled by (H * G) ** -0.25

            outs.append(jax.lax.scan(body, h_BxH, None, length=length)[0])
        return outs

    compiled = jax.jit(gemms).lower(args, wh, h0).compile()
    found = compiled.as_text().count(" while(")
    assert found == len(loops), f"the GEMM reference has {found} recurrent loops, not {len(loops)}"
    gemms = compiled

    run_once = lambda: jax.block_until_ready(gemms(args, wh, h0))
    run_once()

    def run(n):
        for _ in range(n):
            run_once()

    return run, B * T, {}


def _torch_side(cfg):
    import torch
    import torch.nn.functional as F
    from torch import nn

    m, t = cfg.model, cfg.train
    B, T = t.batch_size, t.seq_length
    torch.manual_seed(0)

    class CharRNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(V, m.wordvec_size)
            self.rnn = nn.LSTM(m.wordvec_size, m.rnn_size, num_layers=m.num_layers, batch_first=True)
            self.out = nn.Linear(m.rnn_size, V)

        def forward(self, x, state):
            y, state = self.rnn(self.embed(x), state)
            return self.out(y), state

    net = CharRNN()
    opt = torch.optim.Adam(net.parameters(), lr=t.learning_rate)
    zeros = torch.zeros(m.num_layers, B, m.rnn_size)
    box = {"state": (zeros, zeros.clone()), "cursor": 0, "loss": None}
    batches = [
        (torch.from_numpy(x.astype("int64")), torch.from_numpy(y.astype("int64")))
        for x, y in _batches(B, T, 8)
    ]

    def run(n):
        for _ in range(n):
            x, y = batches[box["cursor"] % len(batches)]
            box["cursor"] += 1
            state = tuple(s.detach() for s in box["state"])
            logits, box["state"] = net(x, state)
            loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for p in net.parameters():
                p.grad.clamp_(-t.grad_clip, t.grad_clip)
            opt.step()
            box["loss"] = loss

    run(2)
    return run, B * T, {"threads": torch.get_num_threads(), "version": torch.__version__,
                        "loss": lambda: float(box["loss"])}  # fmt: skip


def _load_model_file(name: str, directory: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        f"bench_model_{name}", Path(directory) / "jaxvoice" / "model.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def child(preset: str, sides: list[str], variants: dict[str, str], seconds: float, rounds: int) -> dict:
    """One process: build every side (jax first: its compile time is measured on a fresh process), then
    time them in turns."""
    import resource

    from jaxvoice import config

    cfg = config.load(preset)
    built = {}
    for side in sides:
        if side == "jax":
            built[side] = _jax_train_side(cfg)
        elif side == "own":
            from jaxvoice import model

            built[side] = _jax_train_side(cfg, model)
        elif side == "gemm":
            built[side] = _gemm_side(cfg)
        elif side == "torch":
            built[side] = _torch_side(cfg)
        elif side.startswith(PAIRED):
            built[side] = _jax_train_side(config.apply_overrides(cfg, [side[len(PAIRED) :]]))
        else:
            built[side] = _jax_train_side(cfg, _load_model_file(side, variants[side]))
    # steps per window from one timed step each
    steps = {}
    for side, (run, _, _) in built.items():
        t0 = time.perf_counter()
        run(1)
        steps[side] = max(2, round(seconds / max(time.perf_counter() - t0, 1e-6)))
    rates = {side: [] for side in built}
    cpu_rates = {side: [] for side in built}
    for _ in range(rounds):
        for side, (run, tokens, _) in built.items():
            # One untimed step first: the first step after another side ran pays for that switch (its
            # buffers re-faulted, caches refilled; measured ~5% of a 2-step voice_2016 window, charged to
            # whichever side followed the GEMM-only one). A training loop never switches; time steady state.
            run(1)
            t0, c0 = time.perf_counter(), time.process_time()
            run(steps[side])
            rates[side].append(steps[side] * tokens / (time.perf_counter() - t0))
            cpu_rates[side].append(steps[side] * tokens / (time.process_time() - c0))
    out = {
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "load": os.getloadavg(),
    }
    for side, (_, _, info) in built.items():
        info = {k: (v() if callable(v) else v) for k, v in info.items()}
        out[side] = {"rates": rates[side], "cpu_rates": cpu_rates[side], **info}
    return out


# --- the parent: fresh subprocesses ---------------------------------------------------------------------


def _run_child(preset: str, sides: list[str], args, hugetlb: bool) -> dict:
    env = dict(os.environ)
    env.pop("GLIBC_TUNABLES", None)
    if hugetlb:
        env["GLIBC_TUNABLES"] = HUGETLB
    me = str(Path(__file__).resolve())
    cmd = [sys.executable, me, "--child", "--presets", preset, "--sides", ",".join(sides),
           "--seconds", str(args.seconds), "--rounds", str(args.rounds)]  # fmt: skip
    for v in args.variant:
        cmd += ["--variant", v]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-4:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _stats(values: list[float], digits: int = 0) -> dict | None:
    if not values:
        return None
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def _paired(a: list[float], b: list[float]) -> float:
    """Median over rounds of a[i] / b[i]: both timed back to back, under the same machine state."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def _summarize(preset: str, runs: list[dict], sides: list[str]) -> dict:
    from jaxvoice import config

    cfg = config.load(preset)
    ok = [r for r in runs if "error" not in r]
    out: dict = {"errors": [r["error"] for r in runs if "error" in r]} if len(ok) < len(runs) else {}
    if not ok:
        return out
    flops = model_flops(cfg)
    for side in sides:
        if side == "gemm":
            continue
        per_process = [statistics.median(r[side]["rates"]) for r in ok]
        best = max(max(r[side]["rates"]) for r in ok)
        entry = {
            "tokens_per_s": _stats(per_process),
            "tokens_per_s_per_process": [round(x) for x in per_process],
            "best_window_tokens_per_s": round(best),
            "tokens_per_cpu_s": _stats([statistics.median(r[side]["cpu_rates"]) for r in ok]),
        }
        if "compile_s" in ok[0][side]:
            entry["compile_s"] = _stats([r[side]["compile_s"] for r in ok], 2)
        tokens = cfg.train.batch_size * cfg.train.seq_length
        if side.startswith(PAIRED):
            entry["ratio_vs_jax"] = _stats([_paired(r[side]["rates"], r["jax"]["rates"]) for r in ok], 3)
        if side != "torch" and "torch" in sides:
            entry["ratio_vs_torch"] = _stats([_paired(r[side]["rates"], r["torch"]["rates"]) for r in ok], 3)
            best_torch = max(max(r["torch"]["rates"]) for r in ok)
            entry["ratio_vs_torch_best_windows"] = round(best / best_torch, 3)
        if side != "torch" and "gemm" in sides and flops:
            entry["model_gflop_per_s"] = _stats([flops * x / tokens / 1e9 for x in per_process], 1)
            fractions = [_paired(r[side]["rates"], r["gemm"]["rates"]) for r in ok]
            entry["fraction_of_gemm_rate"] = _stats(fractions, 3)
            best_gemm = max(max(r["gemm"]["rates"]) for r in ok)
            entry["fraction_of_gemm_rate_best_windows"] = round(best / best_gemm, 3)
        entry["final_loss"] = round(statistics.median(r[side]["loss"] for r in ok), 4)
        out[side] = entry
    if "gemm" in sides and flops:
        tokens = cfg.train.batch_size * cfg.train.seq_length
        out["gemm_gflop_per_s"] = _stats(
            [flops * statistics.median(r["gemm"]["rates"]) / tokens / 1e9 for r in ok], 1
        )
        out["model_gflop_per_step"] = round(flops / 1e9, 2)
    out["peak_rss_mb_process"] = _stats([r["peak_rss_mb"] for r in ok])
    out["load_avg_1min"] = [round(r["load"][0], 2) for r in ok]
    return out


def _sides_for(preset: str, sides: list[str]) -> list[str]:
    """The sides that apply to `preset`: a frame-level (tiered) preset has no PyTorch peer here and no other
    checkout's flat model to compare with, and the GEMM reference needs shapes the bench knows."""
    from jaxvoice import config

    cfg = config.load(preset)
    if cfg.model.kind == "tiered":
        sides = [s for s in sides if s in ("jax", "gemm") or s.startswith(PAIRED)]
    return [s for s in sides if s != "gemm" or gemm_shapes(cfg) is not None]


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="bench.py train", description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per preset")
    parser.add_argument("--rounds", type=int, default=5, help="timed windows per side and process")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one timed window")
    parser.add_argument("--hugetlb", choices=["on", "off", "both"], default="on")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--own", action="store_true", help="also the installed model under the bench's step")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument(
        "--paired-set", action="append", default=[], metavar="KEY=VALUE",
        help="also the preset with this override, timed turn by turn with it in the same processes",
    )  # fmt: skip
    parser.add_argument("--sides", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    presets = [p for p in args.presets.split(",") if p]
    variants = dict(v.split("=", 1) for v in args.variant)

    if args.child:
        print(json.dumps(child(presets[0], args.sides.split(","), variants, args.seconds, args.rounds)))
        return {}

    from jaxvoice import config
    from jaxvoice.errors import UserError

    for preset in presets:  # a bad override: one line now, not an error in every child
        for kv in args.paired_set:
            try:
                config.apply_overrides(config.load(preset), [kv])
            except UserError as e:
                parser.error(f"--paired-set {kv}: {e}")
    sides = ["jax"] + [PAIRED + kv for kv in args.paired_set]
    sides += (["own"] if args.own else []) + list(variants) + ["gemm"]
    if not args.no_torch and _torch_available():
        sides.append("torch")
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.hugetlb]
    report: dict = {
        "what": "tokens/s of a full training step; medians over fresh processes (range = min..max)",
        "hugetlb": {"on": HUGETLB, "off": "unset", "both": "both"}[args.hugetlb],
        "processes": args.processes,
        "rounds": args.rounds,
        "seconds_per_window": args.seconds,
        "cpu_count": os.cpu_count(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    for preset in presets:
        preset_sides = _sides_for(preset, sides)
        runs: dict[bool, list[dict]] = {mode: [] for mode in modes}
        for _ in range(args.processes):  # with --hugetlb both, the two modes alternate process by process
            for mode in modes:
                runs[mode].append(_run_child(preset, preset_sides, args, mode))
        for mode in modes:
            key = preset if len(modes) == 1 else f"{preset}_{'hugetlb' if mode else 'plain'}"
            report[key] = _summarize(preset, runs[mode], preset_sides)
    report["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


if __name__ == "__main__":  # a child process (the parent runs through scripts/bench.py)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main(sys.argv[1:])
