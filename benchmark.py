"""How fast dqn_atari.py trains here: the envs alone, acting alone, the update alone and the whole training loop in
its learning phase, side by side in one run, for the fast path (the default) and the plain one (--no-fast).

    python benchmark.py --env-id PongNoFrameskip-v4 --num-envs 1 --json cpu.json

Each measurement runs in a fresh process, so each row's peak memory is its own."""

import contextlib
import io
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import tyro

import dqn_atari


@dataclass
class Args:
    env_id: str = "PongNoFrameskip-v4"
    """the game"""
    num_envs: int = 1
    """envs stepped together"""
    cuda: bool = True
    """time the GPU path when a GPU is present"""
    paths: tuple[Literal["fast", "plain"], ...] = ("fast", "plain")
    """the paths to time: fast (dqn_atari's default) and plain (its --no-fast)"""
    env_steps: int = 20_000
    """agent steps timed for the envs alone, and for acting alone"""
    updates: int = 300
    """gradient steps timed for the update alone"""
    learning_starts: int = 5_000
    """the loop's steps before its first update (the peer's setting); the update alone samples this many"""
    loop_steps: int = 5_000
    """agent steps of the loop's learning phase: the first 10% warm up, the rest are timed"""
    buffer_size: int = 50_000
    """the loop's replay buffer (the peer's setting)"""
    repeats: int = 1
    """times each path is measured, the paths taking turns; the table shows the medians"""
    json: str = ""
    """if set, also write the results (the medians and every run) to this JSON file"""


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()  # the GPU's queued work counts too


def peak_memory_mib(device):
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return rss, torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None


def random_play(envs, steps, rng, rb=None):
    """Steps the envs with random actions; adds the transitions to rb when one is given."""
    obs, _ = envs.reset(seed=0)
    resetting = np.zeros(envs.num_envs, bool)
    for _ in range(steps // envs.num_envs):
        actions = rng.integers(envs.single_action_space.n, size=envs.num_envs)
        next_obs, rewards, terminations, truncations, _ = envs.step(actions)
        if rb is not None:
            rb.add(obs, next_obs, actions, rewards, terminations, resetting)
        obs = next_obs
        resetting = terminations | truncations


def train_args(args, fast, run_dir=""):
    """dqn_atari's defaults, with the benchmark's game, envs, device, path and phases."""
    return dqn_atari.Args(env_id=args.env_id, num_envs=args.num_envs, cuda=args.cuda, fast=fast, eval_episodes=0,
                          total_timesteps=args.learning_starts + args.loop_steps, learning_starts=args.learning_starts,
                          buffer_size=args.buffer_size, run_dir=run_dir)


def pick_device(args):
    return torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")


def parts(args, fast):
    """Steps/s of the envs alone and of acting alone, and gradient updates/s of the update alone."""
    device, rng = pick_device(args), np.random.default_rng(0)
    envs = dqn_atari.make_env(args.env_id, args.num_envs)
    random_play(envs, 1_000, rng)  # warm-up
    start = time.perf_counter()
    random_play(envs, args.env_steps, rng)
    env_sps = args.env_steps // args.num_envs * args.num_envs / (time.perf_counter() - start)

    rb = dqn_atari.ReplayBuffer(args.learning_starts, args.num_envs, seed=0)
    random_play(envs, args.learning_starts, rng, rb)
    num_actions = envs.single_action_space.n
    settings = train_args(args, fast)
    q_network, target_network, optimizer = dqn_atari.make_learner(num_actions, settings, device)
    obs = rb.sample(args.num_envs).obs

    def update():  # as the training loop does it
        batch = dqn_atari.Batch(*(dqn_atari.to_device(x, device) for x in rb.sample(settings.batch_size)))
        loss, _ = dqn_atari.td_loss(q_network, target_network, batch, settings.gamma)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    timed = []
    for work, calls in [(lambda: dqn_atari.epsilon_greedy(q_network, obs, 0.0, num_actions, rng, device),
                         args.env_steps // args.num_envs), (update, args.updates)]:
        for _ in range(10):  # warm-up
            work()
        sync(device)
        start = time.perf_counter()
        for _ in range(calls):
            work()
        sync(device)
        timed.append(calls / (time.perf_counter() - start))
    return {"env_sps": env_sps, "act_sps": timed[0] * args.num_envs, "updates_per_s": timed[1]}


class TimedEnvs:
    """make_env's envs, noting when each step's results arrive."""

    def __init__(self, envs):
        self.envs, self.arrivals = envs, []

    def __getattr__(self, name):
        return getattr(self.envs, name)

    def step(self, actions):
        results = self.envs.step(actions)
        self.arrivals.append(time.perf_counter())
        return results


def loop(args, fast):
    """Agent steps/s of dqn_atari.train in its learning phase, and the process's peak memory."""
    device = pick_device(args)
    envs = TimedEnvs(dqn_atari.make_env(args.env_id, args.num_envs))
    with contextlib.redirect_stdout(io.StringIO()), tempfile.TemporaryDirectory() as run_dir:
        dqn_atari.train(train_args(args, fast, run_dir), envs)
    first = (args.learning_starts + args.loop_steps // 10) // args.num_envs  # the first 10% warms up: not timed
    steps = (len(envs.arrivals) - 1 - first) * args.num_envs
    rss, gpu = peak_memory_mib(device)
    return {"loop_sps": steps / (envs.arrivals[-1] - envs.arrivals[first]), "peak_rss_mib": rss, "peak_gpu_mib": gpu}


def in_fresh_process(fn, *args):
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def main():
    args = tyro.cli(Args)
    try:
        dqn_atari.check_args(train_args(args, fast=True, run_dir=tempfile.gettempdir()))
        if min(args.env_steps, args.updates, args.repeats) < 1 or args.loop_steps < 10 * args.num_envs:
            raise ValueError("env_steps, updates and repeats must be positive, and loop_steps at least 10 per env")
    except ValueError as error:
        print(f"benchmark.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    device = pick_device(args)
    args.cuda = device.type == "cuda"  # said once, here
    machine = (torch.cuda.get_device_name() if device.type == "cuda" else
               next((line.split(":")[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                    platform.processor()))
    header = (f"{args.env_id}, num_envs {args.num_envs}, {device.type}: {machine}, {os.cpu_count()} CPU cores, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(header)
    runs = []
    for _ in range(args.repeats):
        for path in args.paths:
            fast = path == "fast"
            runs.append({"path": path, **in_fresh_process(parts, args, fast), **in_fresh_process(loop, args, fast)})
            # What the parts allow: the envs, then the update; the two overlapped (the slower one: what a loop that
            # stepped the envs during the update could reach); and the envs, acting and the update in turn (the loop).
            run, update_sps = runs[-1], dqn_atari.Args.train_frequency * runs[-1]["updates_per_s"]
            run["bound_sequential"] = 1 / (1 / run["env_sps"] + 1 / update_sps)
            run["bound_overlapped"] = min(run["env_sps"], update_sps)
            run["bound_with_acting"] = 1 / (1 / run["env_sps"] + 1 / run["act_sps"] + 1 / update_sps)
            for bound in ["sequential", "overlapped", "with_acting"]:
                run[f"efficiency_{bound}"] = run["loop_sps"] / run[f"bound_{bound}"]
    rows = []
    for path in args.paths:
        mine = [run for run in runs if run["path"] == path]
        rows.append({key: value if key == "path" or value is None else statistics.median(run[key] for run in mine)
                     for key, value in mine[0].items()})
    lines = [("env steps/s, random actions", "env_sps", "{:,.0f}"),
             ("acting steps/s, greedy", "act_sps", "{:,.0f}"),
             ("updates/s, sampling included", "updates_per_s", "{:,.1f}"),
             ("loop steps/s, learning phase", "loop_sps", "{:,.0f}"),
             ("bound: envs, then update", "bound_sequential", "{:,.0f}"),
             ("efficiency", "efficiency_sequential", "{:.0%}"),
             ("bound: envs and update overlapped", "bound_overlapped", "{:,.0f}"),
             ("efficiency", "efficiency_overlapped", "{:.0%}"),
             ("bound: envs, acting, update in turn", "bound_with_acting", "{:,.0f}"),
             ("efficiency", "efficiency_with_acting", "{:.0%}"),
             ("peak RSS of the loop, MiB", "peak_rss_mib", "{:,.0f}"),
             ("peak GPU memory of the loop, MiB", "peak_gpu_mib", "{:,.0f}")]
    print("| | " + " | ".join(row["path"] for row in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for title, key, fmt in lines:
        print(f"| {title} | " + " | ".join("-" if row[key] is None else fmt.format(row[key]) for row in rows) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setup": header, "args": vars(args), "rows": rows, "runs": runs}, f, indent=2)


if __name__ == "__main__":
    main()
