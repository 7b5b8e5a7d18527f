"""Tests for dqn_atari.py. Each compares against an independent reference: a naive buffer that stores whole
stacks, a hand-computed TD target, ale-py configured another way, or a synthetic game whose answer is known."""

import csv
import glob
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict as dataclasses_asdict
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from ale_py import Action
from ale_py.vector_env import AtariVectorEnv
from PIL import Image, ImageSequence
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

import dqn_atari
from dqn_atari import Args, QNetwork, ReplayBuffer

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dqn_atari.py")
BENCHMARK = os.path.join(os.path.dirname(SCRIPT), "benchmark.py")
PLOT = os.path.join(os.path.dirname(SCRIPT), "results", "plot.py")
RECORD = os.path.join(os.path.dirname(SCRIPT), "results", "record.py")
ACTIVITY = os.path.join(os.path.dirname(SCRIPT), "results", "activity.py")


# ---------------------------------------------------------------- references and a synthetic game


class Catch:
    """Catch with ale-py's vector-env interface: a ball falls down a 5x5 grid drawn as 84x84 frames, the paddle
    (0 left, 1 stay, 2 right) must be under it when it reaches the bottom row. A catch scores `catch_reward`; a
    miss scores `miss_reward` and costs a life, and a new ball falls at once. The game ends when the lives run
    out (terminated) or after `max_steps` steps (truncated). Stacks of 4 frames, zeros before the first, and
    NEXT_STEP autoreset, as in ale-py. Frames show the lives and the last outcome, so a test can decode them.

    It records what a learner should see: every real transition (not the reset steps), and each game's score
    and length."""

    SIZE, CELL = 5, 16

    def __init__(self, num_envs, lives=1, catch_reward=1, miss_reward=-1, max_steps=12):
        self.num_envs, self.start_lives, self.max_steps = num_envs, lives, max_steps
        self.catch_reward, self.miss_reward = catch_reward, miss_reward
        self.single_action_space = gym.spaces.Discrete(3)
        self.ale = SimpleNamespace(get_action_set=lambda: [Action.LEFT, Action.NOOP, Action.RIGHT])  # no FIRE
        self.stacks = np.zeros((num_envs, 4, 84, 84), np.uint8)
        self.lives, self.ball_row, self.ball_col, self.paddle, self.outcome, self.t = (
            np.zeros(num_envs, np.int64) for _ in range(6)
        )
        self.score = np.zeros(num_envs)
        self.needs_reset = np.zeros(num_envs, bool)
        self.transitions, self.scores, self.lengths = [], [], []

    def _frame(self, e):
        frame, c = np.zeros((84, 84), np.uint8), self.CELL
        row, col, paddle = self.ball_row[e], self.ball_col[e], self.paddle[e]
        frame[row * c : (row + 1) * c, col * c : (col + 1) * c] = 255
        frame[(self.SIZE - 1) * c :, paddle * c : (paddle + 1) * c] = 128
        frame[0:4, 80:] = 20 * self.lives[e]
        frame[4:8, 80:] = 100 * self.outcome[e]  # 1: caught, 2: missed
        return frame

    def _new_game(self, e):
        self.lives[e], self.t[e], self.score[e], self.outcome[e] = self.start_lives, 0, 0, 0
        self.paddle[e], self.ball_row[e], self.ball_col[e] = self.SIZE // 2, 0, self.rng.integers(self.SIZE)
        self.stacks[e] = 0
        self.stacks[e, -1] = self._frame(e)

    def reset(self, seed=None):
        self.rng = np.random.default_rng(seed)
        for e in range(self.num_envs):
            self._new_game(e)
        self.needs_reset[:] = False
        return self.stacks.copy(), {"lives": self.lives.copy()}

    def step(self, actions):
        n = self.num_envs
        rewards, term, trunc = np.zeros(n, np.int32), np.zeros(n, bool), np.zeros(n, bool)
        for e in range(n):
            if self.needs_reset[e]:  # NEXT_STEP autoreset: this step only resets
                self._new_game(e)
                self.needs_reset[e] = False
                continue
            obs, lives = self.stacks[e].copy(), self.lives[e]
            self.paddle[e] = np.clip(self.paddle[e] + actions[e] - 1, 0, self.SIZE - 1)
            self.ball_row[e] += 1
            self.outcome[e] = 0
            if self.ball_row[e] == self.SIZE - 1:
                caught = self.paddle[e] == self.ball_col[e]
                rewards[e] = self.catch_reward if caught else self.miss_reward
                self.lives[e] -= not caught
                self.outcome[e] = 1 if caught else 2
                self.ball_row[e], self.ball_col[e] = 0, self.rng.integers(self.SIZE)
            self.t[e] += 1
            self.score[e] += rewards[e]
            term[e] = self.lives[e] == 0
            trunc[e] = not term[e] and self.t[e] >= self.max_steps
            self.stacks[e] = np.roll(self.stacks[e], -1, axis=0)
            self.stacks[e, -1] = self._frame(e)
            life_lost = bool(self.lives[e] < lives)
            record = (obs, int(actions[e]), int(rewards[e]), self.stacks[e].copy(), life_lost, bool(trunc[e]))
            self.transitions.append(record)
            if term[e] or trunc[e]:
                self.needs_reset[e] = True
                self.scores.append(self.score[e])
                self.lengths.append(self.t[e])
        return self.stacks.copy(), rewards, term, trunc, {"lives": self.lives.copy()}


def key(obs, action, reward, next_obs, done):
    return obs.tobytes(), int(action), float(reward), next_obs.tobytes(), bool(done)


def sampled_keys(rb, draws, batch_size=256):
    keys = []
    for _ in range(draws):
        b = rb.sample(batch_size)
        keys += [key(*row) for row in zip(b.obs, b.actions, b.rewards, b.next_obs, b.dones)]
    return keys


def assert_holds_the_last(rb, added, capacity, draws, recent):
    """Every sample is, byte for byte, one of the last `capacity` transitions added (nothing older, no reset
    step), and each of the last `recent` ones is sampled (nothing recent is lost)."""
    sampled = set(sampled_keys(rb, draws))
    assert sampled <= set(added[-capacity:])
    assert set(added[-recent:]) <= sampled


def random_stream(num_envs, steps, seed, shape=(84, 84)):
    """Rows as a NEXT_STEP vector env would give them, with random frames: (obs, next_obs, actions, rewards,
    terminations, truncations, is_reset_step). Episodes end by termination or truncation; lives are lost
    mid-episode (terminal for the TD target, the stack goes on); short episodes and the reset steps included."""
    rng = np.random.default_rng(seed)

    def fresh_stack():
        stack = np.zeros((num_envs, 4, *shape), np.uint8)
        stack[:, -1] = rng.integers(1, 256, (num_envs, *shape))
        return stack

    obs, resetting = fresh_stack(), np.zeros(num_envs, bool)
    for _ in range(steps):
        next_obs = np.concatenate([obs[:, 1:], rng.integers(0, 256, (num_envs, 1, *shape), dtype=np.uint8)], 1)
        reset = fresh_stack()
        next_obs[resetting] = reset[resetting]
        u = rng.random(num_envs)
        game_over, truncated = (u < 0.04) & ~resetting, (u > 0.97) & ~resetting
        life_lost = (rng.random(num_envs) < 0.05) & ~resetting
        actions = rng.integers(0, 18, num_envs)
        rewards = np.where(resetting, 0, rng.integers(-1, 2, num_envs)).astype(np.float32)
        yield obs, next_obs, actions, rewards, game_over | life_lost, truncated & ~game_over, resetting.copy()
        obs, resetting = next_obs, game_over | (truncated & ~game_over)


def run_script(*argv, timeout=900):
    return subprocess.run([sys.executable, SCRIPT, *argv], capture_output=True, text=True, timeout=timeout)


def refusal(path, argv, monkeypatch, capsys, own_process=False):
    """A script's exit code, stdout and stderr for argv that it must refuse: in a process of its own, as a user
    runs it, or (for its other refusals, without starting torch again) by calling its main() here."""
    if own_process:
        result = subprocess.run([sys.executable, path, *argv], capture_output=True, text=True, timeout=120)
        return result.returncode, result.stdout, result.stderr
    monkeypatch.setattr(sys, "argv", [path, *argv])
    with pytest.raises(SystemExit) as exit_info:
        script_module(path).main()
    return exit_info.value.code, *capsys.readouterr()


def events(run_dir):
    """The event files of the one run in run_dir (in a folder of its own, or in run_dir), read as TensorBoard does."""
    paths = glob.glob(os.path.join(run_dir, "**", "events.out.tfevents.*"), recursive=True)
    (folder,) = {os.path.dirname(path) for path in paths}
    return EventAccumulator(folder).Reload()


def scalars(run_dir):
    acc = events(run_dir)
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def wait_for_step(stream, past):
    """Reads a run's output up to its first progress line past the step `past`, however long that takes on this
    machine (a line every 10 s), and returns its step."""
    for line in stream:
        if "steps/s" in line:  # "step 1,234/3,000  110 steps/s ..."
            step = int(line.split()[1].split("/")[0].replace(",", ""))
            if step > past:
                return step
    raise AssertionError(f"the run ended before a progress line past step {past}")


# ---------------------------------------------------------------- replay buffer


@pytest.mark.parametrize("num_envs", [1, 3])
def test_buffer_samples_exactly_the_last_transitions_of_random_streams(num_envs):
    capacity = 300 * num_envs
    rb = ReplayBuffer(capacity, num_envs, seed=0)
    added = []  # the naive reference: whole transitions, in the order added
    for obs, next_obs, actions, rewards, terms, truncs, reset_step in random_stream(num_envs, 1500, seed=num_envs):
        rb.add(obs, next_obs, actions, rewards, terms, reset_step)
        for e in np.flatnonzero(~reset_step):
            added.append(key(obs[e], actions[e], rewards[e], next_obs[e], terms[e]))
    assert len(added) > 4 * capacity  # the ring wrapped around several times
    assert_holds_the_last(rb, added, capacity, draws=60, recent=capacity // 2)


def frame_cap(monkeypatch, env_id, frames):
    """make_env's games end (truncated) after `frames` frames instead of the spec's 108,000."""
    monkeypatch.setitem(gym.registry[env_id].kwargs, "max_num_frames_per_episode", frames)


def test_buffer_matches_naive_reference_on_real_breakout_stream(monkeypatch):
    """Three Breakout games with random play: life losses, game overs, truncations at a 600-frame cap."""
    num_envs, capacity = 3, 900
    frame_cap(monkeypatch, "BreakoutNoFrameskip-v4", 600)
    envs = dqn_atari.make_env("BreakoutNoFrameskip-v4", num_envs)
    rb = ReplayBuffer(capacity, num_envs, seed=0)
    rng = np.random.default_rng(0)
    obs, infos = envs.reset(seed=0)
    lives, resetting = infos["lives"], np.zeros(num_envs, bool)
    added, counts = [], dict(game_over=0, truncated=0, life_lost=0)
    for _ in range(1200):
        actions = rng.integers(0, 4, num_envs)
        next_obs, rewards, terms, truncs, infos = envs.step(actions)
        life_lost = infos["lives"] < lives
        dones = terms | life_lost
        rb.add(obs, next_obs, actions, np.clip(rewards, -1, 1), dones, resetting)
        for e in np.flatnonzero(~resetting):
            added.append(key(obs[e], actions[e], np.clip(rewards[e], -1, 1), next_obs[e], dones[e]))
        counts["game_over"] += terms.sum()
        counts["truncated"] += truncs.sum()
        counts["life_lost"] += life_lost.sum()
        obs, lives, resetting = next_obs, infos["lives"], terms | truncs
    assert min(counts.values()) > 0, counts
    assert_holds_the_last(rb, added, capacity, draws=40, recent=capacity // 2)


def test_buffer_keeps_final_frame_of_truncated_episode():
    rb = ReplayBuffer(50, 1, frame_shape=(2, 2), seed=0)
    frames = [np.full((2, 2), v, np.uint8) for v in range(1, 10)]
    zero = np.zeros((2, 2), np.uint8)

    def stack(*planes):
        return np.stack(planes)[None]

    s0 = stack(zero, zero, zero, frames[0])
    s1 = stack(zero, zero, frames[0], frames[1])  # truncated here: s1 is the true final stack
    r0 = stack(zero, zero, zero, frames[5])  # the reset stack
    r1 = stack(zero, zero, frames[5], frames[6])
    no, yes = np.array([False]), np.array([True])
    rb.add(s0, s1, np.array([2]), np.array([1.0]), no, no)  # truncated: not a done
    rb.add(s1, r0, np.array([0]), np.array([0.0]), no, yes)  # the reset step
    rb.add(r0, r1, np.array([1]), np.array([-1.0]), no, no)
    batch = rb.sample(200)
    truncated = batch.actions == 2
    assert truncated.any() and (batch.actions != 0).all()  # the reset step is never sampled
    assert (batch.next_obs[truncated] == s1[0]).all() and (batch.dones[truncated] == 0).all()
    assert (batch.obs[~truncated] == r0[0]).all() and (batch.next_obs[~truncated] == r1[0]).all()


def test_buffer_takes_streams_without_reset_steps_too():
    """A caller that drops the reset steps itself gets the same transitions."""
    rb = ReplayBuffer(600, 2, seed=0)
    added = []
    for obs, next_obs, actions, rewards, terms, truncs, reset_step in random_stream(2, 400, seed=7):
        keep = ~reset_step
        if keep.all():
            rb.add(obs, next_obs, actions, rewards, terms, np.zeros(2, bool))
            added += [key(obs[e], actions[e], rewards[e], next_obs[e], terms[e]) for e in range(2)]
    assert_holds_the_last(rb, added, 600, draws=20, recent=200)


@pytest.mark.parametrize("capacity, num_envs", [(100_000, 1), (100_000, 8), (50_000, 1)])
def test_buffer_bytes_per_transition(capacity, num_envs):
    rb = ReplayBuffer(capacity, num_envs)
    nbytes = sum(v.nbytes for v in vars(rb).values() if isinstance(v, np.ndarray))
    naive = 2 * 4 * 84 * 84  # obs and next_obs stored whole
    assert nbytes / capacity <= 7_100
    assert naive / (nbytes / capacity) > 3.9


def test_buffer_sampling_is_uniform():
    rb = ReplayBuffer(40, 1, frame_shape=(1, 1), seed=0)
    obs = np.zeros((1, 4, 1, 1), np.uint8)
    for t in range(20):  # one episode of 20 steps: 20 transitions, told apart by their action
        next_obs = np.concatenate([obs[:, 1:], np.full((1, 1, 1, 1), t + 1, np.uint8)], 1)
        rb.add(obs, next_obs, np.array([t]), np.zeros(1), np.zeros(1, bool), np.zeros(1, bool))
        obs = next_obs
    counts = np.bincount(rb.sample(100_000).actions, minlength=20)
    assert counts.min() > 0.9 * 5000 and counts.max() < 1.1 * 5000


def test_buffer_rejects_a_capacity_too_small_for_its_envs():
    with pytest.raises(ValueError, match="capacity 16 is too small for 4 envs"):
        ReplayBuffer(16, 4)


def test_buffer_skips_the_reset_steps_the_loop_names_where_pixels_would_fool_it():
    """A game over whose final stack ends in three black frames: its reset step's next_obs (zero padding, then the
    first frame) is then the final stack moved on by one frame, and pixels alone would store it as a transition."""
    rng = np.random.default_rng(0)
    frame = lambda: rng.integers(1, 256, (1, 1, 84, 84), dtype=np.uint8)  # noqa: E731 (never black)
    black = np.zeros((1, 1, 84, 84), np.uint8)
    last_seen = frame()
    before = np.concatenate([frame(), last_seen, black, black], axis=1)  # the stack a step before the end
    final = np.concatenate([last_seen, black, black, black], axis=1)  # the game's last stack
    reset = np.concatenate([black, black, black, frame()], axis=1)  # NEXT_STEP's reset stack
    after = np.concatenate([reset[:, 1:], frame()], axis=1)
    no, yes = np.zeros(1, bool), np.ones(1, bool)
    assert (reset[:, :-1] == final[:, 1:]).all()  # what pixels alone would take for the next step of the game
    rb = ReplayBuffer(100, 1, seed=0)
    rb.add(before, final, np.array([1]), np.array([-1.0]), yes, no)
    rb.add(final, reset, np.array([2]), np.array([0.0]), no, yes)  # the reset step, named
    rb.add(reset, after, np.array([3]), np.array([0.0]), no, no)
    assert set(rb.sample(300).actions.tolist()) == {1, 3}  # the reset step (action 2) is not stored


# ---------------------------------------------------------------- environment


def test_make_env_gives_stacks_of_four_84x84_frames_zero_padded_at_reset():
    envs = dqn_atari.make_env("PongNoFrameskip-v4", 2)
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    assert (obs[:, :3] == 0).all() and (obs[:, 3] > 0).any()
    assert envs.single_action_space.n == 6  # Pong's minimal action set, from the spec
    next_obs, *_ = envs.step(np.zeros(2, np.int64))
    assert (next_obs[:, :3] == obs[:, 1:]).all()


def test_make_env_names_the_autoreset_mode_that_the_loop_and_the_buffer_rely_on(monkeypatch):
    """NEXT_STEP: the step after a game over only resets. Named, not left to ale-py's default: were the default to
    change, a truncated game would bootstrap from the next game's first frame, with no error."""
    made = []
    monkeypatch.setattr(dqn_atari.ale_py.vector_env, "AtariVectorEnv", lambda **kw: made.append(kw))
    dqn_atari.make_env("PongNoFrameskip-v4", 1)
    assert made[0]["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP


def test_make_env_takes_v5_ids_and_rejects_others():
    envs = dqn_atari.make_env("ALE/Breakout-v5", 1)
    assert envs.single_action_space.n == 4
    for bad in ["Pongg-v4", "CartPole-v1", ""]:
        with pytest.raises(ValueError, match="pprint_registry"):
            dqn_atari.make_env(bad, 1)


def test_fire_on_reset_starts_breakout():
    """With NOOP only, Breakout's ball is never served unless FIRE was pressed at reset: lives go only then."""

    def lives_after_noops(envs):
        envs.reset(seed=0)
        for _ in range(300):
            _, _, _, _, infos = envs.step(np.zeros(1, np.int64))
        return infos["lives"][0]

    assert lives_after_noops(dqn_atari.make_env("BreakoutNoFrameskip-v4", 1)) < 5
    assert lives_after_noops(AtariVectorEnv("breakout", 1, use_fire_reset=False)) == 5


def test_life_loss_does_not_reset_the_game():
    envs = dqn_atari.make_env("BreakoutNoFrameskip-v4", 1)
    obs, infos = envs.reset(seed=0)
    rng, lives, seen = np.random.default_rng(0), infos["lives"], 0
    for _ in range(400):
        next_obs, _, terms, truncs, infos = envs.step(rng.integers(0, 4, 1))
        if infos["lives"][0] < lives[0] and infos["lives"][0] > 0:
            assert not terms[0] and not truncs[0]
            assert (next_obs[0, :3] == obs[0, 1:]).all()  # the same game goes on
            seen += 1
        obs, lives = next_obs, infos["lives"]
    assert seen > 0


def test_training_sends_and_stores_fire_after_a_lost_life(tmp_path):
    """Breakout waits for FIRE after a lost life: the loop sends it as the next action, stores it as that step's
    action, and counts the step. Random play (epsilon 1) would pick FIRE by chance only a quarter of the time."""
    args = Args(env_id="BreakoutNoFrameskip-v4", total_timesteps=2500, learning_starts=10_000, buffer_size=5000,
                start_e=1.0, end_e=1.0, eval_episodes=0, cuda=False, run_dir=str(tmp_path))
    _, rb = dqn_atari.train(args, dqn_atari.make_env(args.env_id, 1))
    assert rb.written[0] > 2500  # every step stored, the FIRE steps too (plus each game's first stack)
    slots = np.arange(rb.written[0] - 1)
    after_a_lost_life = slots[rb.dones[0, slots] & rb.valid[0, slots + 1]]  # the game went on after a done
    assert len(after_a_lost_life) >= 5
    assert (rb.actions[0, after_a_lost_life + 1] == 1).all()  # FIRE is action 1 of Breakout's set


def test_evaluation_fires_after_a_lost_life_so_a_noop_agent_loses_the_game(monkeypatch):
    """An agent that always chooses NOOP: with FIRE after each lost life it loses its 5 lives in a few hundred
    steps; without, the next ball is never served and the game runs to the 108,000-frame cap."""

    class AlwaysNoop(torch.nn.Module):
        def forward(self, x):  # Q-values whose largest is NOOP's (action 0)
            return torch.eye(4)[torch.zeros(len(x), dtype=torch.int64)]

    played = []
    make_env = dqn_atari.make_env

    def recorded_env(*a, **kw):
        envs = make_env(*a, **kw)
        step = envs.step
        envs.step = lambda actions: played.append(step(actions)) or played[-1]
        return envs

    monkeypatch.setattr(dqn_atari, "make_env", recorded_env)
    scores = dqn_atari.evaluate(AlwaysNoop(), "BreakoutNoFrameskip-v4", 1, 0.0, torch.device("cpu"), seed=0)
    terminations, truncations = played[-1][2], played[-1][3]
    assert terminations[0] and not truncations[0] and len(played) < 3000 and scores[0] >= 0


def test_rewards_are_the_raw_game_score():
    envs = dqn_atari.make_env("SpaceInvadersNoFrameskip-v4", 2)
    envs.reset(seed=0)
    rng, rewards = np.random.default_rng(0), set()
    for _ in range(600):
        _, r, *_ = envs.step(rng.integers(0, 6, 2))
        rewards |= set(r.tolist())
    assert max(rewards) >= 5  # an alien is worth 5 to 30 points: nothing clipped them


def test_frame_cap_truncates(monkeypatch):
    frame_cap(monkeypatch, "PongNoFrameskip-v4", 400)
    envs = dqn_atari.make_env("PongNoFrameskip-v4", 1)
    envs.reset(seed=0)
    for step in range(200):
        _, _, terms, truncs, _ = envs.step(np.zeros(1, np.int64))
        if truncs[0]:
            break
    assert truncs[0] and not terms[0] and 90 < step < 110  # 400 frames at 4 frames a step


# ---------------------------------------------------------------- network, TD target, schedule, acting


def test_qnetwork_is_the_nature_cnn():
    q_network = QNetwork(6)
    assert sum(p.numel() for p in q_network.parameters()) == 1_687_206  # conv 32/64/64, fc 512, 6 outputs
    x = torch.randint(0, 256, (5, 4, 84, 84), dtype=torch.uint8)
    assert q_network(x).shape == (5, 6)


def test_td_target_matches_hand_computation_for_terminal_and_truncated():
    torch.manual_seed(0)
    q_network, target_network = QNetwork(4), QNetwork(4)
    rb = ReplayBuffer(100, 1, seed=0)
    rng = np.random.default_rng(0)
    s = [np.zeros((1, 4, 84, 84), np.uint8)]
    for _ in range(4):
        s.append(np.concatenate([s[-1][:, 1:], rng.integers(0, 256, (1, 1, 84, 84), dtype=np.uint8)], 1))
    rb.add(s[0], s[1], np.array([1]), np.array([1.0]), np.array([True]), np.array([False]))  # terminal
    rb.add(s[1], s[2], np.array([2]), np.array([-1.0]), np.array([False]), np.array([False]))  # truncated
    rb.add(s[2], s[3], np.array([3]), np.array([0.0]), np.array([False]), np.array([False]))
    batch = dqn_atari.Batch(*(torch.as_tensor(x) for x in rb.sample(64)))
    loss, q_values = dqn_atari.td_loss(q_network, target_network, batch, gamma=0.9)

    expected_targets, expected_q = [], []
    with torch.no_grad():
        for obs, action, next_obs in [(s[0], 1, s[1]), (s[1], 2, s[2]), (s[2], 3, s[3])]:
            reward = {1: 1.0, 2: -1.0, 3: 0.0}[action]
            bootstrap = 0.0 if action == 1 else 0.9 * target_network(torch.from_numpy(next_obs))[0].max().item()
            expected_targets.append(reward + bootstrap)
            expected_q.append(q_network(torch.from_numpy(obs))[0, action].item())
    a = batch.actions.numpy() - 1
    errors = np.array(expected_q)[a] - np.array(expected_targets)[a]
    huber = np.where(np.abs(errors) < 1, 0.5 * errors**2, np.abs(errors) - 0.5).mean()
    assert set(a.tolist()) == {0, 1, 2}
    assert np.allclose(q_values.detach().numpy(), np.array(expected_q)[a], atol=1e-5)
    assert loss.item() == pytest.approx(huber, rel=1e-4)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def gradient_step(learner, batch, gamma=0.99):
    """The training loop's update (the TD loss, then an Adam step) on a learner of make_learner; returns the loss
    and the mean Q-value."""
    q_network, target_network, optimizer = learner
    loss, q_values = dqn_atari.td_loss(q_network, target_network, batch, gamma)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach(), q_values.detach().mean()


def test_adam_eps_sets_the_step_of_a_small_gradient_as_by_hand():
    """Adam's first step is lr * g / (|g| + eps): with eps 1e-8 a gradient of 1e-6 moves a weight by about lr,
    as much as a large one; with --adam-eps 1.5e-4 it moves it by lr / 151, on both paths."""
    lr, g = 1e-4, 1e-6
    for adam_eps in (1e-8, 1.5e-4):
        for fast in (False, True):
            q_network, _, optimizer = dqn_atari.make_learner(6, Args(learning_rate=lr, adam_eps=adam_eps, fast=fast),
                                                             torch.device("cpu"))
            for p in q_network.parameters():
                p.detach().zero_()  # from 0, the step is read without rounding
                p.grad = torch.full_like(p, g)
            optimizer.step()
            for p in q_network.parameters():  # 1e-3: torch's CPU kernels gave 2e-4 on one host; eps 1e-8 alone is 1%
                torch.testing.assert_close(-p.detach(), torch.full_like(p, lr * g / (g + adam_eps)), rtol=1e-3, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_fast_path_computes_what_the_plain_one_does(device, monkeypatch):
    """Channels-last convolutions and fused Adam change how fast the loop acts and learns, not what it computes.
    Each of 6 updates gets the plain path's loss, mean Q and greedy actions on a new batch; after the first
    update the weights are the plain path's."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # on a GPU: float32 against float32
    device, lr = torch.device(device), 1e-4
    learners = []
    for fast in (False, True):
        torch.manual_seed(0)
        learners.append(dqn_atari.make_learner(6, Args(fast=fast, learning_rate=lr), device))
    plain, fast = learners
    plain_net, fast_net = plain[0], fast[0]
    assert fast_net.network[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert fast[2].param_groups[0]["fused"] and not plain[2].param_groups[0]["fused"]
    start = [p.detach().clone() for p in plain_net.parameters()]
    rng = np.random.default_rng(0)
    for update in range(6):
        frames = rng.integers(0, 256, (32, 5, 84, 84), dtype=np.uint8)
        batch = dqn_atari.Batch(*(dqn_atari.to_device(np.ascontiguousarray(x), device) for x in (
            frames[:, :4], rng.integers(0, 6, 32), rng.normal(size=32).astype(np.float32), frames[:, 1:],
            (rng.random(32) < 0.2).astype(np.float32))))
        assert torch.equal(fast_net(batch.obs[:8]).argmax(1), plain_net(batch.obs[:8]).argmax(1))
        (plain_loss, plain_q), (fast_loss, fast_q) = gradient_step(plain, batch), gradient_step(fast, batch)
        assert fast_loss.item() == pytest.approx(plain_loss.item(), rel=1e-5)
        assert fast_q.item() == pytest.approx(plain_q.item(), rel=1e-5, abs=1e-6)
        if update == 0:
            # Adam's first step is lr * g / (|g| + eps): about lr for every weight, and rounding-level differences
            # in a gradient near 0 can move a weight by a small fraction of lr. Beyond that, the weights are equal.
            for p, q, p0 in zip(plain_net.parameters(), fast_net.parameters(), start):
                assert (p - p0).abs().mean() > 0.5 * lr
                torch.testing.assert_close(q, p, rtol=0, atol=0.05 * lr)


def test_epsilon_falls_linearly_then_stays_at_its_end_value():
    assert dqn_atari.linear_schedule(1.0, 0.1, 100, 0) == 1.0
    assert dqn_atari.linear_schedule(1.0, 0.1, 100, 50) == pytest.approx(0.55)
    assert dqn_atari.linear_schedule(1.0, 0.1, 100, 100) == pytest.approx(0.1)
    assert dqn_atari.linear_schedule(1.0, 0.1, 100, 10_000) == pytest.approx(0.1)


def test_epsilon_greedy_is_greedy_at_zero_and_uniform_at_one():
    q_network = QNetwork(5)
    obs = np.random.default_rng(0).integers(0, 256, (64, 4, 84, 84), dtype=np.uint8)
    with torch.no_grad():
        best = q_network(torch.from_numpy(obs)).argmax(1).numpy()
    rng = np.random.default_rng(0)
    assert (dqn_atari.epsilon_greedy(q_network, obs, 0.0, 5, rng, torch.device("cpu")) == best).all()
    draws = [dqn_atari.epsilon_greedy(q_network, obs, 1.0, 5, rng, torch.device("cpu")) for _ in range(100)]
    counts = np.bincount(np.concatenate(draws))
    assert len(counts) == 5 and counts.min() > 0.8 * 64 * 100 / 5


def test_cuda_flag_falls_back_to_cpu_with_a_notice(tmp_path, monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    run_main(monkeypatch, "--env-id", "PongNoFrameskip-v4", "--total-timesteps", "100", "--learning-starts", "50",
             "--buffer-size", "1000", "--eval-episodes", "0", "--run-dir", str(tmp_path), "--run-name", "run")
    assert "no GPU found: running on the CPU" in capsys.readouterr().out
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["global_step"] == 100


# ---------------------------------------------------------------- the training loop


def catch_args(tmp_path, **overrides):
    settings = dict(seed=1, total_timesteps=2000, learning_starts=200, buffer_size=5000, train_frequency=2,
                    learning_rate=5e-4, target_network_frequency=100, exploration_fraction=0.4, end_e=0.05,
                    eval_episodes=0, cuda=False, run_dir=str(tmp_path))
    return Args(**{**settings, **overrides})


def test_training_loop_learns_catch(tmp_path):
    q_network, _ = dqn_atari.train(catch_args(tmp_path), Catch(1))
    envs = Catch(25)  # fresh games: every start column, greedy play
    obs, _ = envs.reset(seed=123)
    over = np.zeros(25, bool)
    while not over.all():
        with torch.no_grad():
            actions = q_network(torch.from_numpy(obs)).argmax(1).numpy()
        obs, _, terms, truncs, _ = envs.step(actions)
        over |= terms | truncs
    assert envs.scores[:25] == [3.0] * 25  # three balls a game, every one caught: the optimum


def test_training_loop_learning_signals(tmp_path):
    """Clipped rewards and life losses for the TD target; raw whole-game scores in the logs; truncation
    bootstraps; reset steps never stored."""
    envs = Catch(2, lives=3, catch_reward=5, miss_reward=-3, max_steps=12)
    args = catch_args(tmp_path, total_timesteps=1200, learning_starts=1000, buffer_size=1200, batch_size=8)
    _, rb = dqn_atari.train(args, envs)
    assert [name.split("__")[:3] for name in os.listdir(tmp_path)] == [["BreakoutNoFrameskip-v4", "dqn_atari", "1"]]

    truth = {}
    for obs, action, reward, next_obs, life_lost, truncated in envs.transitions:
        truth[key(obs, action, np.sign(reward), next_obs, life_lost)] = (reward, truncated)
    sampled = sampled_keys(rb, draws=20)
    assert set(sampled) <= set(truth)  # every sampled (obs, action, clipped reward, next_obs, done) is true
    kinds = {(truth[k][0], k[4], truth[k][1]) for k in sampled}
    assert (-3, True, False) in kinds  # a miss: reward -1, terminal for the TD target
    assert (5, False, False) in kinds  # a catch: reward +1
    assert any(truncated and not done for _, done, truncated in kinds)  # truncated: bootstraps
    assert max(envs.lives) <= 3 and any(s < -3 for s in envs.scores)  # games span several lives

    logged = scalars(str(tmp_path))
    assert logged["charts/episodic_return"] == envs.scores
    assert logged["charts/episodic_length"] == envs.lengths


@pytest.mark.parametrize("num_envs, train_frequency", [(1, 4), (3, 4), (8, 4), (3, 1)])
def test_replay_ratio_does_not_depend_on_num_envs(tmp_path, monkeypatch, num_envs, train_frequency):
    """One update per train_frequency agent steps past learning_starts, exactly. With 3 envs, step 200 falls
    between two vector steps (198 and 201): the first learning iteration updates only for 199..201 past 200."""
    calls = []
    td_loss = dqn_atari.td_loss
    monkeypatch.setattr(dqn_atari, "td_loss", lambda *a: calls.append(1) or td_loss(*a))
    args = catch_args(tmp_path, total_timesteps=600, learning_starts=200, train_frequency=train_frequency,
                      batch_size=4)
    dqn_atari.train(args, Catch(num_envs))
    last_step = -(-600 // num_envs) * num_envs  # the loop ends on the first vector step at or past 600
    assert len(calls) == last_step // train_frequency - 200 // train_frequency


def test_training_is_deterministic_on_cpu(tmp_path):
    args = dict(env_id="PongNoFrameskip-v4", total_timesteps=350, learning_starts=300, buffer_size=1000,
                train_frequency=1, eval_episodes=0, cuda=False, seed=3)  # 50 updates: a loss logged each 25
    net_a, _ = dqn_atari.train(Args(**args, run_dir=str(tmp_path / "a")))
    net_b, _ = dqn_atari.train(Args(**args, run_dir=str(tmp_path / "b")))
    losses_a, losses_b = scalars(str(tmp_path / "a"))["losses/td_loss"], scalars(str(tmp_path / "b"))["losses/td_loss"]
    assert len(losses_a) == 2 and losses_a == losses_b
    for p, q in zip(net_a.parameters(), net_b.parameters()):
        assert torch.equal(p, q)
    dqn_atari.train(Args(**{**args, "seed": 4}, run_dir=str(tmp_path / "c")))
    assert scalars(str(tmp_path / "c"))["losses/td_loss"] != losses_a  # the check above can fail


def test_the_progress_line_gives_no_time_left_until_learning_runs_and_no_nan_before_a_game_ends(tmp_path, capsys):
    """Before learning starts the steps are fast: a time left from them would be far too low."""
    args = catch_args(tmp_path, run_name="run", total_timesteps=10_000, learning_starts=1000)
    run = dqn_atari.Run(args, dqn_atari.make_learner(3, args, torch.device("cpu")),
                        np.random.default_rng(0).spawn(2), ReplayBuffer(100, 1))
    lines = []
    for step, returns in [(500, []), (1000, [-1.0]), (2000, [-1.0, 3.0])]:  # each 10 s apart
        run.recent_returns.extend(returns[len(run.recent_returns):])
        run.printed_at -= 10
        run.after_step(step, step - 1, 0.5)
        lines.append(capsys.readouterr().out.strip())
    assert lines[0].endswith("return - (0 games)  time left: once learning runs"), lines[0]
    assert lines[1].endswith("return -1.0 (1 games)  time left: once learning runs"), lines[1]  # 500..1000: no
    assert "return 1.0 (2 games)  " in lines[2] and lines[2].endswith(" left") and "once" not in lines[2]  # 100/s
    left = lines[2].split("  ")[-1].split()[0]  # 8,000 steps at ~100 steps/s: about 80 s
    assert 60 <= sum(int(x) * 60**i for i, x in enumerate(reversed(left.split(":")))) <= 90, lines[2]


# ---------------------------------------------------------------- the script, end to end


def test_end_to_end_pong_logs_saves_and_evaluates_from_checkpoint(tmp_path):
    result = run_script("--env-id", "PongNoFrameskip-v4", "--total-timesteps", "2500", "--learning-starts", "2100",
                        "--buffer-size", "5000", "--target-network-frequency", "500", "--eval-episodes", "2",
                        "--run-dir", str(tmp_path), "--no-cuda")  # 100 updates, the target synced at step 2,500
    assert result.returncode == 0, result.stderr
    assert "\nstep 2,500: checkpoint saved to " in result.stdout  # the end, said as the end
    logged = scalars(str(tmp_path))
    for tag in ["charts/episodic_return", "charts/episodic_length", "losses/td_loss", "losses/q_values",
                "eval/episodic_return"]:
        assert logged[tag], tag
    assert all(-21 <= r <= 21 for r in logged["charts/episodic_return"])  # whole games of Pong, raw score
    assert len(logged["eval/episodic_return"]) == 2 and "eval: " in result.stdout
    assert "hyperparameters/text_summary" in events(str(tmp_path)).Tags()["tensors"]
    (checkpoint,) = glob.glob(str(tmp_path / "*" / "checkpoint.pt"))
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["global_step"] == 2500 and saved["args"]["env_id"] == "PongNoFrameskip-v4"

    result = run_script("--eval-checkpoint", checkpoint, "--eval-episodes", "2", "--eval-epsilon", "0.5")
    assert result.returncode == 0, result.stderr
    assert "over 2 games of PongNoFrameskip-v4" in result.stdout


def test_ctrl_c_saves_checkpoint_and_logs(tmp_path):
    # A shell without job control starts background jobs with SIGINT ignored, and Python keeps it so: restore it.
    proc = subprocess.Popen([sys.executable, SCRIPT, "--env-id", "PongNoFrameskip-v4", "--learning-starts", "500",
                             "--buffer-size", "5000", "--run-dir", str(tmp_path), "--no-cuda"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # The first TD loss is logged after 25 updates, one per 4 steps past 500: at step 600. On a loaded machine the
    # first progress line can come before it (at step 588 once), so wait for a line past it.
    wait_for_step(proc.stdout, past=600)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # a no-op once it has exited
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert any(line.startswith("Ctrl-C, step ") for line in out.splitlines()), out
    (checkpoint,) = glob.glob(str(tmp_path / "*" / "checkpoint.pt"))
    assert torch.load(checkpoint, weights_only=True)["global_step"] > 500
    logged = scalars(str(tmp_path))
    for tag in ["losses/td_loss", "charts/SPS", "charts/epsilon"]:  # written before the interrupt, and flushed
        assert logged[tag], tag


BAD_ARGS = [  # the arguments, and what the one line must name
    (["--num-envs", "0"], "--num-envs must be positive"),
    (["--buffer-size", "-5"], "--buffer-size must hold at least 5 transitions per env"),
    (["--buffer-size", "1"], "--buffer-size must hold at least 5 transitions per env"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--learning-starts", "-1"], "--learning-starts must be in [0, --total-timesteps)"),
    (["--exploration-fraction", "0"], "--exploration-fraction"),
    (["--exploration-fraction", "1.5"], "--exploration-fraction"),
    (["--total-timesteps", "-5"], "--total-timesteps must be positive"),
    (["--learning-starts", "100", "--total-timesteps", "100"], "--learning-starts must be in [0, --total-timesteps)"),
    (["--gamma", "1.5"], "--gamma"),
    (["--end-e", "0.5", "--start-e", "0.1"], "--end-e <= --start-e"),
    (["--buffer-size", "40", "--num-envs", "16", "--batch-size", "8", "--learning-starts", "16"], "--buffer-size"),
    (["--checkpoint-frequency", "-1"], "--checkpoint-frequency"),
    (["--eval-episodes", "-1"], "--eval-episodes"),
    (["--resume", "auto"], "--resume auto needs --run-name"),
    (["--env-id", "Pongg-v4"], "'Pongg-v4' is not an Atari env id"),
    (["--env-id", "CartPole-v1"], "'CartPole-v1' is not an Atari env id"),
]


@pytest.mark.parametrize("argv, says", BAD_ARGS, ids=[" ".join(argv) for argv, _ in BAD_ARGS])
def test_bad_arguments_exit_2_with_one_line_naming_the_flag(argv, says, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["dqn_atari.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        dqn_atari.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("dqn_atari.py: error: ") and says in err


def test_bad_env_id_from_the_command_line(tmp_path):
    result = run_script("--env-id", "Pongg-v4", "--run-dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Pongg-v4" in result.stderr and "pprint_registry" in result.stderr
    assert not os.listdir(tmp_path)  # nothing was started


def test_a_run_dir_that_cannot_be_made_is_refused_before_the_replay_memory(tmp_path):
    (tmp_path / "a_file").write_text("")
    result = run_script("--env-id", "PongNoFrameskip-v4", "--run-dir", str(tmp_path / "a_file"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--run-dir" in result.stderr, result.stderr
    assert result.stdout == ""  # not a word of the replay memory: it was not taken


def test_help_opens_with_a_description_and_gives_each_flag_one_default():
    result = run_script("--help")
    assert result.returncode == 0 and "DQN for Atari" in result.stdout.split("--exp-name")[0]
    run_name = " ".join(result.stdout.split("--run-name")[1].split("--checkpoint-frequency")[0].split())
    assert run_name.count("default") == 1, run_name
    assert "if toggled" not in result.stdout


def test_load_checkpoint_reads_the_actions_from_the_network_without_starting_an_env(tmp_path, monkeypatch):
    path = tmp_path / "old.pt"  # the keys every checkpoint so far has had
    torch.save({"model": QNetwork(4).state_dict(), "args": dataclasses_asdict(Args()), "global_step": 5}, path)
    monkeypatch.setattr(dqn_atari, "make_env", lambda *a, **kw: pytest.fail("an env was started"))
    checkpoint, q_network = dqn_atari.load_checkpoint(str(path))
    assert q_network.network[-1].out_features == 4 and checkpoint["args"]["env_id"] == "BreakoutNoFrameskip-v4"


def test_bad_checkpoint_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    bogus = tmp_path / "bogus.pt"
    bogus.write_text("not a checkpoint")
    for path, own_process in [(str(bogus), True), (str(tmp_path / "missing.pt"), False)]:
        code, _, err = refusal(SCRIPT, ["--eval-checkpoint", path], monkeypatch, capsys, own_process)
        assert code == 2 and err.count("\n") == 1, err


# ---------------------------------------------------------------- long runs: stops, checkpoints, resumes, memory


def test_sigterm_saves_then_resume_goes_on_in_the_same_folder(tmp_path):
    """SIGTERM in the learning phase: exit 143, a line for the checkpoint of the step where it stopped and one for
    the replay memory, the logs flushed. --resume on that checkpoint, with a new end, goes on with that memory (no
    refill), learns on to the end in the same folder, and logs each step once; plot.py reads the two segments. The
    run is long: no machine ends it before the stop."""
    argv = ["--env-id", "PongNoFrameskip-v4", "--total-timesteps", "1000000", "--learning-starts", "500",
            "--buffer-size", "5000", "--eval-episodes", "0", "--run-dir", str(tmp_path), "--run-name", "pong",
            "--no-cuda"]
    started = time.time()
    proc = subprocess.Popen([sys.executable, SCRIPT, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "pong"
    try:
        wait_for_step(proc.stdout, past=500)  # in the learning phase
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # a no-op once it has exited
    assert proc.returncode == 143 and err == "", err
    (said,) = [line for line in out.splitlines() if line.startswith("SIGTERM")]
    stopped_at = int(said.split("step ")[1].split(":")[0].replace(",", ""))
    assert torch.load(run / "checkpoint.pt", weights_only=True)["global_step"] == stopped_at > 500
    memory = run / "replay_memory.bin"
    assert out.splitlines()[-1] == f"saving the replay memory (0.04 GB) to {memory}; a resume goes on with it"
    assert logged_steps(run)["charts/SPS"]  # flushed on the way out

    end = stopped_at + 200  # two TD losses logged: one per 25 updates, 100 steps
    result = run_script("--resume", str(run / "checkpoint.pt"), "--total-timesteps", str(end), "--eval-episodes", "2")
    assert result.returncode == 0, result.stderr
    assert f"going on from step {stopped_at:,}" in result.stdout
    assert sorted(os.listdir(tmp_path)) == ["pong"]
    assert torch.load(run / "checkpoint.pt", weights_only=True)["global_step"] == end
    logged = logged_steps(run)
    for tag in ["charts/SPS", "charts/episodic_return", "losses/td_loss"]:
        assert logged[tag] == sorted(set(logged[tag])), tag  # each step once, in order
    # The resumed run learns on at once (a TD loss is logged each 25 updates: 100 steps), to the end.
    assert "the replay memory goes on with its " in result.stdout and "refilling" not in result.stdout
    assert any(stopped_at < step <= stopped_at + 100 for step in logged["losses/td_loss"])
    assert logged["losses/td_loss"][-1] > end - 100
    assert [p for p in os.listdir(run) if "tfevents" not in p] == ["checkpoint.pt"]  # the memory: deleted at the end

    rows = plotted(run, tmp_path / "curve")
    assert 0 < rows["train"][-1][1] < (time.time() - started) / 3600  # the hours, without the gap between
    last_logged = max(max(steps) for tag, steps in logged.items() if not tag.startswith("eval/"))
    assert len(rows["eval"]) == 2 and {step for step, _, _ in rows["eval"]} == {last_logged}


def plotted(run, out):
    """Runs results/plot.py on a run folder; checks its CSV against TensorBoard's own reading of the events."""
    plot = subprocess.run([sys.executable, PLOT, str(run), "--out", str(out)], capture_output=True, text=True)
    assert plot.returncode == 0, plot.stderr
    assert os.path.getsize(str(out) + ".png") > 10_000
    with open(str(out) + ".csv") as file:
        rows = {"train": [], "eval": []}
        for row in csv.DictReader(file):
            rows[row["kind"]].append((int(row["step"]), float(row["hours"]), float(row["score"])))
    acc = EventAccumulator(str(run)).Reload()
    assert [(step, score) for step, _, score in rows["train"]] == [
        (e.step, e.value) for e in acc.Scalars("charts/episodic_return")]
    hours = [hours for _, hours, _ in rows["train"]]
    assert hours == sorted(hours)
    if rows["eval"]:
        assert [score for _, _, score in rows["eval"]] == [e.value for e in acc.Scalars("eval/episodic_return")]
    return rows


def script_module(path):
    """A script as a module of its own (a script in a folder, not a package): each call runs it afresh."""
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def plot_module():
    return script_module(PLOT)


def test_plot_counts_training_hours_without_pauses(tmp_path):
    plot = plot_module()
    start = time.time() + 1000  # the writer's own first event comes now: a gap, not counted
    writer = SummaryWriter(str(tmp_path))
    for step, seconds in [(10, 0), (20, 10), (30, 20), (40, 900), (50, 910)]:  # paused 880 s before step 40
        writer.add_scalar("charts/episodic_return", -21.0, step, walltime=start + seconds)
    writer.close()
    train, evaluation, final_step, hours, _ = plot.read_run(str(tmp_path))
    assert hours * 3600 == pytest.approx(30) and final_step == 50 and evaluation == []
    assert [round(h * 3600) for _, h, _ in train] == [0, 10, 20, 20, 30]


def test_plot_keeps_only_the_last_evaluation_of_an_extended_run(tmp_path):
    """A finished run evaluates (logged at steps 0, 1, ...); extended with a larger --total-timesteps, it trains on
    from its last step in a new process and evaluates again: the curve's final evaluation is the second one."""
    plot = plot_module()
    start = time.time()
    first = SummaryWriter(str(tmp_path), filename_suffix=".1")
    for step in (10, 20, 30):
        first.add_scalar("charts/episodic_return", -21.0, step, walltime=start + step)
    for game, score in enumerate([-20.0, -19.0]):
        first.add_scalar("eval/episodic_return", score, game, walltime=start + 40)
    first.close()
    second = SummaryWriter(str(tmp_path), purge_step=31, filename_suffix=".2")
    for step in (40, 50):
        second.add_scalar("charts/episodic_return", 5.0, step, walltime=start + 100 + step)
    for game, score in enumerate([18.0, 20.0]):
        second.add_scalar("eval/episodic_return", score, game, walltime=start + 200)
    second.close()
    train, evaluation, final_step, _, _ = plot.read_run(str(tmp_path))
    assert [step for step, _, _ in train] == [10, 20, 30, 40, 50] and final_step == 50
    assert [score for _, _, score in evaluation] == [18.0, 20.0]


def test_plot_puts_the_games_of_a_lost_folder_before_a_resume_from_its_checkpoint(tmp_path):
    """A machine lost, the run goes on in a new folder from a checkpoint of step 30: --earlier takes the games up
    to step 30 from the CSV of the lost folder (not the one at step 35, past the checkpoint), and the new
    folder's hours go on from the last of them. A folder that holds games from before its first resume is refused:
    they would be there twice."""
    earlier = tmp_path / "lost.csv"
    earlier.write_text("kind,step,hours,score\ntrain,10,0.1000,-21.0\ntrain,30,0.3000,-20.0\n"
                       "train,35,0.3500,-19.0\n")
    start = time.time()
    run = tmp_path / "run"
    writer = SummaryWriter(str(run), purge_step=31)
    writer.add_scalar("charts/memory_refilled", 1.0, 30, walltime=start)
    for step, seconds in [(40, 0), (50, 36)]:
        writer.add_scalar("charts/episodic_return", 5.0, step, walltime=start + seconds)
    writer.close()
    out = tmp_path / "curve"
    plot = subprocess.run([sys.executable, PLOT, str(run), "--out", str(out), "--earlier", str(earlier)],
                          capture_output=True, text=True)
    assert plot.returncode == 0, plot.stderr
    assert plot.stdout.startswith(f"4 training games (2 from {earlier}), 0 evaluation games, 50 steps, 0.31 ")
    assert "1 resumes (1 refilled)" in plot.stdout
    with open(str(out) + ".csv") as file:
        rows = [(row["step"], row["hours"], row["score"]) for row in csv.DictReader(file)]
    assert rows == [("10", "0.1000", "-21.0"), ("30", "0.3000", "-20.0"), ("40", "0.3000", "5.0"),
                    ("50", "0.3100", "5.0")]

    whole = tmp_path / "whole"  # from step 0, resumed at step 20
    for purge_step, step in [(None, 10), (21, 30)]:
        writer = SummaryWriter(str(whole), purge_step=purge_step, filename_suffix=f".{step}")
        writer.add_scalar("charts/episodic_return", -21.0, step, walltime=start + step)
        writer.close()
    plot = subprocess.run([sys.executable, PLOT, str(whole), "--out", str(out), "--earlier", str(earlier)],
                          capture_output=True, text=True)
    assert plot.returncode == 1 and plot.stderr == (
        "plot.py: error: --earlier needs a run folder that begins with a resume from a checkpoint\n")


# ---------------------------------------------------------------- results/record.py


def test_record_films_the_game_in_colour_at_full_size(tmp_path):
    """2 s of Pong by an untrained network: a GIF of 30 agent steps at 70 ms each (repeats merged, the time kept),
    160 wide and 210 high, in the colours of the game's own frames as gymnasium's AtariEnv renders them."""
    torch.save({"model": QNetwork(6).state_dict(), "args": {"env_id": "PongNoFrameskip-v4"}, "global_step": 0},
               tmp_path / "pong.pt")
    gif = tmp_path / "pong.gif"
    result = subprocess.run([sys.executable, RECORD, str(tmp_path / "pong.pt"), "--out", str(gif), "--seconds", "2"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith("30 frames, 2.1 s, ") and len(result.stdout.splitlines()) == 1
    assert 1_000 < os.path.getsize(gif) < 100_000
    frames = []  # the film as shown: each stored frame for its duration
    for frame in ImageSequence.Iterator(Image.open(gif)):
        assert frame.size == (160, 210) and frame.info["duration"] % 70 == 0
        frames += [np.array(frame.convert("RGB"))] * (frame.info["duration"] // 70)
    assert len(frames) == 30
    colours = {tuple(pixel) for frame in frames for pixel in frame.reshape(-1, 3)}
    env = gym.make("PongNoFrameskip-v4", obs_type="rgb")  # the reference: the game's frames, another way
    seen = [env.reset(seed=0)[0]] + [env.step(action)[0] for action in np.random.default_rng(0).integers(6, size=100)]
    env.close()
    reference = {tuple(pixel) for frame in seen for pixel in frame.reshape(-1, 3)}
    assert len(colours) >= 5 and colours <= reference  # brown court, white walls, orange and green paddles, ...


def lockstep_histories(env_id, agent_seed, film_seed, steps=800):
    """The (reward, terminated, truncated, lives) of each step of make_env's env and record.py's colour env, stepped
    with the same random actions (FIRE among them), each reset with its seed."""
    envs, film = dqn_atari.make_env(env_id, 1), script_module(RECORD).colour_env(env_id)
    envs.reset(seed=agent_seed)
    frame = film.reset(seed=film_seed)[0]
    assert frame.shape == (1, 1, 210, 160, 3)
    rng = np.random.default_rng(0)
    histories = ([], [])
    for _ in range(steps):
        action = rng.integers(envs.single_action_space.n, size=1)
        for env, history in zip((envs, film), histories):
            _, reward, terminated, truncated, infos = env.step(action)
            history.append((reward[0], terminated[0], truncated[0], infos["lives"][0]))
    return histories


@pytest.mark.parametrize("env_id", ["PongNoFrameskip-v4", "ALE/Breakout-v5"])  # v5: sticky actions, lives
def test_colour_env_stays_in_lockstep_with_the_agents_env(env_id):
    """The film's env, seeded as the agent's, scores, loses lives and ends at the same steps over 800 random steps
    with points in them (and in Breakout, finished games); seeded otherwise, it does not (the check can fail)."""
    agent, film = lockstep_histories(env_id, 1, 1)
    assert agent == film
    assert sum(reward != 0 for reward, _, _, _ in agent) >= 3
    assert env_id == "PongNoFrameskip-v4" or sum(terminated for _, terminated, _, _ in agent) >= 2
    agent, film = lockstep_histories(env_id, 1, 2)
    assert agent != film


def test_record_refuses_bad_input_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "bogus.pt").write_text("not a checkpoint")
    torch.save({"model": QNetwork(6).state_dict(), "args": {"env_id": "PongNoFrameskip-v4"}, "global_step": 0},
               tmp_path / "pong.pt")
    for i, argv in enumerate([[str(tmp_path / "missing.pt")], [str(tmp_path / "bogus.pt")],
                              [str(tmp_path / "pong.pt"), "--seconds", "0"],
                              [str(tmp_path / "pong.pt"), "--seconds", "abc"]]):
        code, out, err = refusal(RECORD, [*argv, "--out", str(tmp_path / "out.gif")], monkeypatch, capsys, i == 0)
        assert code == 2 and out == "", argv
        assert err.startswith("record.py: error: ") and len(err.splitlines()) == 1, argv
    assert not (tmp_path / "out.gif").exists()


def write_resumed_run(run_dir):
    """Four processes: the first logs steps 10-30 (checkpoint at 20), the second resumes from 20 and logs 30-50
    (checkpoint at 40), the third resumes from 40 and is killed before its next checkpoint, the fourth resumes from
    40 again. Each logs every 10 s; the processes' own first events come 1000 s earlier: a gap, not counted. The
    second went on with its replay memory, the third too, the fourth refilled it (its memory was not saved)."""
    start = time.time() + 1000
    for process, (resumed_from, refilled, steps) in enumerate([(None, None, (10, 20, 30)), (20, 0, (30, 40, 50)),
                                                                (40, 0, (50, 60)), (40, 1, (50, 60, 70))]):
        purge_step = None if resumed_from is None else resumed_from + 1  # as dqn_atari's train sets it
        writer = SummaryWriter(str(run_dir / "new"), purge_step=purge_step)
        if resumed_from is not None:  # as dqn_atari's Run logs it, at the step it goes on from
            writer.add_scalar("charts/memory_refilled", float(refilled), resumed_from, walltime=start + 100 * process)
        for i, step in enumerate(steps):
            writer.add_scalar("charts/episodic_return", float(step), step, walltime=start + 100 * process + 10 * i)
        writer.close()
        # Files are named by their start second, then a counter that sorts as text (9 after 10): name them in order.
        (path,) = (run_dir / "new").iterdir()
        path.rename(run_dir / f"events.out.tfevents.{process:010d}.test")


def test_plot_finds_each_resume_at_its_step_and_hours(tmp_path):
    """The resumes from 20 and from 40 (the second restart from 40 replaces the first), each at the training hours
    of its process's start: 20 s, then 20 + 20 + 10 s (the killed process's time counts)."""
    write_resumed_run(tmp_path)
    plot = plot_module()
    train, evaluation, final_step, hours, resumes = plot.read_run(str(tmp_path))
    assert [(step, round(h * 3600), refilled) for step, h, refilled in resumes] == [(20, 20, False), (40, 50, True)]
    assert [step for step, _, _ in train] == [10, 20, 30, 40, 50, 60, 70] and round(hours * 3600) == 70


def test_plot_draws_resumes_and_target_on_both_panels(tmp_path, monkeypatch):
    write_resumed_run(tmp_path / "run")
    plot = plot_module()
    monkeypatch.setattr(sys, "argv", ["plot.py", str(tmp_path / "run"), "--out", str(tmp_path / "curve"),
                                      "--target", "18"])
    plot.main()
    import matplotlib.pyplot as plt  # plot.main chose the Agg backend first

    steps_axes, hours_axes = plt.gcf().axes
    for ax, resumes in ((steps_axes, [20 / 1e6, 40 / 1e6]), (hours_axes, [20 / 3600, 50 / 3600])):
        vertical = [line.get_xdata()[0] for line in ax.lines if list(line.get_ydata()) == [0, 1]]
        horizontal = [line.get_ydata()[0] for line in ax.lines if list(line.get_xdata()) == [0, 1]]
        assert vertical == pytest.approx(resumes, rel=1e-3) and horizontal == [18]
    labels = steps_axes.get_legend_handles_labels()[1]
    assert labels.count("resumed") == 1 and labels.count("resumed, replay memory refilled") == 1
    assert "target 18" in labels
    plt.close("all")
    with open(tmp_path / "curve.csv") as file:
        assert {line.split(",")[0] for line in file} == {"kind", "train"}  # no new kind of row


def test_resume_drops_what_a_killed_run_logged_after_its_checkpoint(tmp_path):
    """A kill -9 leaves the last periodic checkpoint, and logs past it. Resumed from that checkpoint, the run
    logs those steps again: TensorBoard (and plot.py) keep the new points only, each step once."""
    args = catch_args(tmp_path, total_timesteps=300, run_name="catch")
    dqn_atari.train(args, Catch(1))
    (tmp_path / "catch" / "checkpoint.pt").rename(tmp_path / "catch" / "at-300.pt")
    early = torch.load(tmp_path / "catch" / "at-300.pt", weights_only=True)
    longer = Args(**{**early["args"], "total_timesteps": 600})
    dqn_atari.train(longer, Catch(1), early)  # the run that is killed at 600, its checkpoint at 300
    killed = logged_steps(tmp_path / "catch")["charts/episodic_return"]
    dqn_atari.train(longer, Catch(1), early)  # the restart from the checkpoint at 300 logs 300..600 again
    logged = logged_steps(tmp_path / "catch")["charts/episodic_return"]
    assert killed == sorted(set(killed)) and max(killed) > 400
    assert logged == sorted(set(logged)) and len(logged) == len(killed)  # the same games: each step once
    plotted(tmp_path / "catch", tmp_path / "curve")


def logged_steps(run):
    """The steps of every scalar tag in a run folder, all its event files read in order, as TensorBoard does."""
    acc = EventAccumulator(str(run)).Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_resume_restores_weights_optimizer_and_random_streams(tmp_path, monkeypatch):
    args = catch_args(tmp_path, total_timesteps=650, learning_starts=450, run_name="catch", checkpoint_frequency=500)
    dqn_atari.train(args, Catch(1))
    saved = torch.load(tmp_path / "catch" / "checkpoint.pt", weights_only=True)
    assert saved["global_step"] == 650
    resumed = Args(**{**saved["args"], "learning_rate": 2e-4, "adam_eps": 1.5e-4, "fast": False})  # given flags
    learner = dqn_atari.make_learner(3, resumed, torch.device("cpu"))
    rb = ReplayBuffer(resumed.buffer_size, 1)
    dqn_atari.Run(resumed, learner, np.random.default_rng(0).spawn(2), rb, saved)
    q_network, target_network, optimizer = learner
    for name, tensor in q_network.state_dict().items():
        assert torch.equal(tensor, saved["model"][name])
        assert not torch.equal(target_network.state_dict()[name], tensor)  # synced at step 600, not 650
        assert torch.equal(target_network.state_dict()[name], saved["target_model"][name])
    restored = optimizer.state_dict()
    assert saved["optimizer"]["param_groups"][0]["fused"] and saved["optimizer"]["param_groups"][0]["lr"] == 5e-4
    assert saved["optimizer"]["param_groups"][0]["eps"] == 1e-8
    assert restored["param_groups"][0]["lr"] == 2e-4 and not restored["param_groups"][0]["fused"]  # this run's
    assert restored["param_groups"][0]["eps"] == 1.5e-4
    for index, state in saved["optimizer"]["state"].items():
        for key in ["step", "exp_avg", "exp_avg_sq"]:
            assert torch.equal(restored["state"][index][key], state[key]), key

    states = []
    epsilon_greedy = dqn_atari.epsilon_greedy
    monkeypatch.setattr(dqn_atari, "epsilon_greedy", lambda *a: states.append(a[4].bit_generator.state) or
                        epsilon_greedy(*a))
    dqn_atari.train(dqn_atari.Args(**{**saved["args"], "total_timesteps": 750}), Catch(1), saved)
    assert states[0] == saved["rng"][0] != np.random.default_rng(args.seed).spawn(2)[0].bit_generator.state


def resume_argv(*argv):
    args = dqn_atari.tyro.cli(Args, args=list(argv))
    args, checkpoint, _ = dqn_atari.saved_args(args, list(argv))
    return args, checkpoint


def saved_run(path, global_step=500, **args):
    """A checkpoint of a run, with everything that train saves, at global_step."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    q_network = QNetwork(6)
    rngs = np.random.default_rng(0).spawn(2)
    torch.save({"model": q_network.state_dict(), "target_model": q_network.state_dict(),
                "optimizer": torch.optim.Adam(q_network.parameters()).state_dict(), "global_step": global_step,
                "rng": [rng.bit_generator.state for rng in rngs], "recent_returns": [-21.0],
                "args": dataclasses_asdict(Args(env_id="PongNoFrameskip-v4", **args))}, path)


def test_resume_takes_the_flags_given_and_says_each_change(tmp_path, monkeypatch, capsys):
    """Flags given beside --resume override the saved run's, in one printed line; the others are the saved run's.
    The run goes on in the checkpoint's folder, also where the original --run-dir is given again."""
    monkeypatch.chdir(tmp_path)
    saved_run("runs/x/checkpoint.pt", learning_rate=5e-4, total_timesteps=1000, learning_starts=100, run_dir="runs",
              run_name="x")
    args, checkpoint = resume_argv("--resume", "runs/x/checkpoint.pt", "--run-dir", "runs", "--learning-rate",
                                   "1e-4", "--seed", "2", "--no-torch-deterministic")
    assert checkpoint["global_step"] == 500
    assert (args.run_dir, args.run_name) == ("runs", "x")  # the same folder
    assert (args.learning_rate, args.seed, args.torch_deterministic) == (1e-4, 2, False)  # given
    assert (args.learning_starts, args.total_timesteps, args.env_id) == (100, 1000, "PongNoFrameskip-v4")  # saved
    (said,) = capsys.readouterr().out.splitlines()
    assert said.startswith("changed from the saved run: ") and "--run-dir" not in said
    for change in ["--learning-rate 0.0001 (saved: 0.0005)", "--seed 2 (saved: 1)", "--torch-deterministic False"]:
        assert change in said
    args, _ = resume_argv("--resume", "runs/x/checkpoint.pt")
    assert args == Args(**{**checkpoint["args"], "resume": "runs/x/checkpoint.pt"}) and capsys.readouterr().out == ""
    args, folders = resume_argv("--resume", "runs/x")  # the run's folder: its checkpoint
    assert folders["global_step"] == 500 and (args.run_dir, args.run_name) == ("runs", "x")


def test_resume_with_a_new_length_keeps_epsilons_schedule(tmp_path):
    """A 10M-step run at step 500,000 is halfway down its 1M steps of exploration (epsilon 0.505). Extended to 20M,
    it stays there: its exploration keeps its 1M steps. An exploration fraction given beside it is taken as given."""
    path = str(tmp_path / "run" / "checkpoint.pt")
    saved_run(path, global_step=500_000, total_timesteps=10_000_000, exploration_fraction=0.1)
    args, _ = resume_argv("--resume", path, "--total-timesteps", "20000000")
    exploration_steps = args.exploration_fraction * args.total_timesteps  # as train computes it
    assert exploration_steps == pytest.approx(1_000_000)
    assert dqn_atari.linear_schedule(1.0, 0.01, exploration_steps, 500_000) == pytest.approx(0.505)
    args, _ = resume_argv("--resume", path, "--total-timesteps", "20000000", "--exploration-fraction", "0.2")
    assert args.exploration_fraction == 0.2


def test_resume_refuses_what_cannot_go_on_with_one_line(tmp_path, monkeypatch, capsys):
    """A game with another number of actions than the checkpoint's Q-network, and an agent saved without what
    training needs (results/pong.pt): exit 2 and one line each, before anything starts."""
    saved_run(str(tmp_path / "run" / "checkpoint.pt"))
    torch.save({"model": QNetwork(6).state_dict(), "args": dataclasses_asdict(Args()), "global_step": 5},
               tmp_path / "agent.pt")
    for argv, says in [(["--resume", str(tmp_path / "run" / "checkpoint.pt"), "--env-id", "BreakoutNoFrameskip-v4"],
                        "--env-id BreakoutNoFrameskip-v4 has 4 actions, the checkpoint's Q-network 6"),
                       (["--resume", str(tmp_path / "agent.pt")], "holds an agent to evaluate, not a run")]:
        monkeypatch.setattr(sys, "argv", ["dqn_atari.py", *argv])
        with pytest.raises(SystemExit) as exit_info:
            dqn_atari.main()
        out, err = capsys.readouterr()
        assert exit_info.value.code == 2 and err.count("\n") == 1 and says in err and out == "", (out, err)
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoint.pt"]


def test_resume_takes_a_checkpoint_saved_before_flags_were_removed(tmp_path, capsys):
    path = str(tmp_path / "run" / "checkpoint.pt")
    saved_run(path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["args"]["cuda_graphs"] = False  # a flag of earlier versions
    torch.save(checkpoint, path)
    args, checkpoint = resume_argv("--resume", path)
    assert capsys.readouterr().out == ""  # a flag that is gone is dropped: the run goes on as saved
    assert checkpoint["global_step"] == 500 and args.env_id == "PongNoFrameskip-v4"


def run_main(monkeypatch, *argv):
    """dqn_atari.main() in this process, as from the command line."""
    monkeypatch.setattr(sys, "argv", ["dqn_atari.py", *argv])
    dqn_atari.main()


def test_a_run_stopped_in_its_final_evaluation_evaluates_when_resumed(tmp_path, monkeypatch, capsys):
    argv = ["--env-id", "PongNoFrameskip-v4", "--total-timesteps", "1100", "--learning-starts", "1000",
            "--buffer-size", "5000", "--eval-episodes", "3", "--run-dir", str(tmp_path), "--run-name", "job",
            "--resume", "auto", "--no-cuda"]

    def ctrl_c(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(dqn_atari, "evaluate", ctrl_c)
    with pytest.raises(SystemExit) as exit_info:
        run_main(monkeypatch, *argv)
    assert exit_info.value.code == 130
    saved = torch.load(tmp_path / "job" / "checkpoint.pt", weights_only=True)
    assert saved["global_step"] == 1100 and not saved["evaluated"]

    played = []
    monkeypatch.setattr(dqn_atari, "evaluate", lambda q, env_id, games, *a: played.append(games) or np.zeros(games))
    monkeypatch.setattr(dqn_atari, "train", lambda *a, **kw: pytest.fail("it trains"))  # no memory, no envs
    copied = tmp_path / "copy" / "final.pt"  # a copy under another name: its folder is the run's
    copied.parent.mkdir()
    copied.write_bytes((tmp_path / "job" / "checkpoint.pt").read_bytes())
    run_main(monkeypatch, "--resume", str(copied), "--no-cuda")
    assert played == [3] and torch.load(copied.parent / "checkpoint.pt", weights_only=True)["evaluated"]
    run_main(monkeypatch, *argv)  # resumed: nothing left to train, the evaluation to play
    assert played == [3, 3] and torch.load(tmp_path / "job" / "checkpoint.pt", weights_only=True)["evaluated"]
    assert logged_steps(tmp_path / "job")["eval/episodic_return"] == [0, 1, 2]
    capsys.readouterr()
    run_main(monkeypatch, *argv)
    assert played == [3, 3] and "is done" in capsys.readouterr().out


def test_eval_checkpoint_plays_the_games_of_its_runs_final_evaluation(tmp_path, monkeypatch, capsys):
    """With no other flag, the same games as the run's own final evaluation, so the same scores; flags given play
    other games; another --env-id is played, and named in one line."""
    played = []
    evaluate = dqn_atari.evaluate
    monkeypatch.setattr(dqn_atari, "evaluate", lambda q, env_id, games, epsilon, device, seed: played.append(
        (env_id, games, epsilon, seed)) or evaluate(q, env_id, games, epsilon, device, seed))
    run_main(monkeypatch, "--env-id", "PongNoFrameskip-v4", "--total-timesteps", "600", "--learning-starts", "500",
             "--buffer-size", "1000", "--eval-episodes", "1", "--eval-epsilon", "0.5", "--seed", "3", "--run-dir",
             str(tmp_path), "--run-name", "run", "--no-cuda")
    scores = [line for line in capsys.readouterr().out.splitlines() if line.startswith("eval: ")]
    checkpoint = str(tmp_path / "run" / "checkpoint.pt")
    run_main(monkeypatch, "--eval-checkpoint", checkpoint, "--no-cuda")
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("eval: ")] == scores
    assert played == [("PongNoFrameskip-v4", 1, 0.5, 4)] * 2  # the seed + the number of envs, as train does
    run_main(monkeypatch, "--eval-checkpoint", checkpoint, "--seed", "10", "--eval-episodes", "2", "--no-cuda")
    run_main(monkeypatch, "--eval-checkpoint", checkpoint, "--env-id", "ALE/Pong-v5", "--no-cuda")
    assert played[2:] == [("PongNoFrameskip-v4", 2, 0.5, 11), ("ALE/Pong-v5", 1, 0.5, 4)]
    assert "--env-id ALE/Pong-v5 (saved: PongNoFrameskip-v4)" in capsys.readouterr().out


def test_a_finished_run_resumed_for_its_evaluation_makes_no_replay_memory_and_no_training_envs(tmp_path, monkeypatch,
                                                                                               capsys):
    argv = ["--env-id", "PongNoFrameskip-v4", "--total-timesteps", "600", "--learning-starts", "500",
            "--buffer-size", "1000", "--eval-episodes", "0", "--run-dir", str(tmp_path), "--run-name", "job",
            "--resume", "auto", "--no-cuda"]
    run_main(monkeypatch, *argv)  # trained, with no evaluation
    played = []
    monkeypatch.setattr(dqn_atari, "evaluate", lambda q, env_id, games, *a: played.append(games) or np.zeros(games))
    monkeypatch.setattr(dqn_atari, "train", lambda *a, **kw: pytest.fail("it trains"))
    run_main(monkeypatch, *argv, "--eval-episodes", "2")  # an evaluation asked for: played
    run_main(monkeypatch, *argv, "--eval-episodes", "2")  # then done
    assert played == [2] and "is done" in capsys.readouterr().out.splitlines()[-1]
    assert logged_steps(tmp_path / "job")["eval/episodic_return"] == [0, 1]


def test_one_command_starts_a_run_and_restarts_it(tmp_path):
    """The job script's command: --resume auto with a fixed --run-name starts the run when it has no checkpoint, goes
    on from its checkpoint when it has one, and does nothing (exit 0) once the run is done."""
    argv = ["--env-id", "PongNoFrameskip-v4", "--total-timesteps", "600", "--learning-starts", "500",
            "--buffer-size", "5000", "--eval-episodes", "0", "--run-dir", str(tmp_path), "--run-name", "job",
            "--resume", "auto", "--no-cuda"]
    first = run_script(*argv)
    assert first.returncode == 0 and "going on" not in first.stdout and "is done" not in first.stdout, first.stderr
    again = run_script(*argv)
    assert again.returncode == 0 and "is done" in again.stdout and "logs and checkpoints" not in again.stdout
    longer = run_script(*argv[:3], "1200", *argv[4:])  # a larger --total-timesteps extends it (past the refill)
    assert longer.returncode == 0 and "going on from step 600" in longer.stdout, longer.stderr
    assert torch.load(tmp_path / "job" / "checkpoint.pt", weights_only=True)["global_step"] == 1200
    assert sorted(os.listdir(tmp_path)) == ["job"]
    result = run_script("--resume", "auto", "--run-dir", str(tmp_path))
    assert result.returncode == 2 and "--run-name" in result.stderr and result.stderr.count("\n") == 1


def stop_at_call(monkeypatch, owner, name, call, signum=signal.SIGTERM):
    """Wraps owner.name so that its call number `call` sends this process the signal, in the middle of that step."""
    original = getattr(owner, name)
    calls = []

    def wrapped(*a, **kw):
        calls.append(1)
        if len(calls) == call:
            os.kill(os.getpid(), signum)  # Python runs the handler at once, here, inside the step
        return original(*a, **kw)

    monkeypatch.setattr(owner, name, wrapped)
    return calls


def stopped_catch_run(tmp_path, monkeypatch, envs=None):
    """A Catch run stopped by SIGTERM in the iteration of step 400 (acting is called once a step): it saves its
    checkpoint and memory, and raises Terminated. Returns its args, its replay buffer and its checkpoint."""
    args = catch_args(tmp_path, run_name="catch", batch_size=4)
    made = []
    monkeypatch.setattr(dqn_atari, "ReplayBuffer", lambda *a, **kw: made.append(ReplayBuffer(*a, **kw)) or made[-1])
    stop_at_call(monkeypatch, dqn_atari, "epsilon_greedy", 400)
    with pytest.raises(dqn_atari.Terminated):
        dqn_atari.train(args, envs or Catch(1))
    monkeypatch.undo()
    return args, made[0], torch.load(tmp_path / "catch" / "checkpoint.pt", weights_only=True)


def read_memory_file(path):
    """The records of a replay memory file, read by NumPy's own reader, one after another."""
    records = []
    with open(path, "rb") as file:
        while file.peek(1):
            records.append(np.lib.format.read_array(file, allow_pickle=False))
    return records


def resumed_buffer(args, checkpoint, capsys=None):
    """A buffer of args' size, filled by the Run of a resume from checkpoint, and what the resume printed."""
    rb = ReplayBuffer(args.buffer_size, 1)
    learner = dqn_atari.make_learner(3, args, torch.device("cpu"))
    run = dqn_atari.Run(args, learner, np.random.default_rng(0).spawn(2)[:1] + [rb.rng], rb,
                        checkpoint)
    run.writer.close()
    return rb, run


def test_a_stopped_runs_memory_comes_back_array_for_array_and_samples_the_same_batch(tmp_path, monkeypatch, capsys):
    envs = Catch(1)
    args, stopped, checkpoint = stopped_catch_run(tmp_path, monkeypatch, envs)
    assert checkpoint["global_step"] == 400
    records = read_memory_file(tmp_path / "catch" / "replay_memory.bin")
    assert records[0].tolist() == [checkpoint["run_id"], 400]  # marked with the run and the step
    arrays = ["frames", "actions", "rewards", "dones", "valid", "written"]
    for name, record in zip(arrays, records[1:], strict=True):
        assert np.array_equal(record, getattr(stopped, name)), name
    capsys.readouterr()
    rb, run = resumed_buffer(args, checkpoint)
    said = f"the replay memory goes on with its {len(envs.transitions)} transitions"  # every one stored (< 400)
    assert run.learning_starts == args.learning_starts and said in capsys.readouterr().out  # no refill
    for name in arrays:
        assert np.array_equal(getattr(rb, name), getattr(stopped, name)), name
    for a, b in zip(rb.sample(32), stopped.sample(32)):  # the restored stream, and the stopped run's own
        assert np.array_equal(a, b)
    assert logged_steps(tmp_path / "catch")["charts/memory_refilled"] == [400]


def test_a_resume_with_its_memory_updates_at_the_first_step_where_an_update_is_due(tmp_path, monkeypatch, capsys):
    args, _, checkpoint = stopped_catch_run(tmp_path, monkeypatch)
    calls = stop_at_call(monkeypatch, dqn_atari, "td_loss", call=0)  # counts the updates
    dqn_atari.train(Args(**{**checkpoint["args"], "total_timesteps": 451}), Catch(1), checkpoint)
    assert len(calls) == 451 // 2 - 400 // 2  # updates at steps 402, 404, ..., 450: none skipped to refill
    assert "refilling" not in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "catch" / "replay_memory.bin")  # a finished run deletes its memory


class RunsCodeWhenUnpickled:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.makedirs, (self.path,)


@pytest.mark.parametrize("damage", ["truncated", "buffer size", "pickle", "other step", "none"])
def test_a_resume_refills_a_memory_it_cannot_trust_with_one_line(tmp_path, monkeypatch, capsys, damage):
    args, _, checkpoint = stopped_catch_run(tmp_path, monkeypatch)
    memory = tmp_path / "catch" / "replay_memory.bin"
    if damage == "truncated":
        os.truncate(memory, os.path.getsize(memory) - 1000)
    elif damage == "buffer size":
        args = Args(**{**dataclasses_asdict(args), "buffer_size": 4000})
    elif damage == "pickle":  # the file holds a pickled object: it must not run
        np.save(memory, np.array([RunsCodeWhenUnpickled(str(tmp_path / "ran"))], dtype=object), allow_pickle=True)
        os.rename(str(memory) + ".npy", memory)
    elif damage == "other step":
        checkpoint = {**checkpoint, "global_step": 300}
    else:
        os.remove(memory)
    capsys.readouterr()
    rb, run = resumed_buffer(args, checkpoint)
    (said,) = [line for line in capsys.readouterr().out.splitlines() if "replay memory" in line]
    reason = {"truncated": "is truncated", "buffer size": "of another --buffer-size", "pickle": "of another",
              "other step": "saved by another run or at another step", "none": "none was saved"}[damage]
    assert said.startswith("refilling the replay memory (") and reason in said, said
    assert not rb.valid.any() and not rb.written.any()  # empty: it refills
    assert run.learning_starts == checkpoint["global_step"] + args.learning_starts
    assert not os.path.exists(tmp_path / "ran")
    assert logged_steps(tmp_path / "catch")["charts/memory_refilled"] == [checkpoint["global_step"]]


def test_a_resume_after_kill_9_refills_with_one_line(tmp_path):
    argv = ["--env-id", "PongNoFrameskip-v4", "--total-timesteps", "100000", "--learning-starts", "500",
            "--buffer-size", "5000", "--checkpoint-frequency", "1000", "--eval-episodes", "0", "--run-dir",
            str(tmp_path), "--run-name", "pong", "--no-cuda"]
    proc = subprocess.Popen([sys.executable, SCRIPT, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_step(proc.stdout, past=1000)  # a periodic checkpoint was written
    finally:
        proc.kill()
        proc.communicate()
    saved = torch.load(tmp_path / "pong" / "checkpoint.pt", weights_only=True)["global_step"]
    result = run_script("--resume", str(tmp_path / "pong" / "checkpoint.pt"), "--total-timesteps", str(saved + 600))
    assert result.returncode == 0, result.stderr
    (said,) = [line for line in result.stdout.splitlines() if line.startswith(("refilling", "the replay memory"))]
    assert said == (f"refilling the replay memory (none was saved with this checkpoint: only a stop saves it (Ctrl-C, "
                    f"SIGTERM)): learning goes on past step {saved + 500:,}")
    assert min(logged_steps(tmp_path / "pong")["losses/td_loss"][-1:]) > saved + 500


def test_a_stop_killed_while_it_writes_the_memory_leaves_none_that_loads(tmp_path, monkeypatch, capsys):
    """A write that fails in the middle (here a KeyboardInterrupt from within it): the file is not there, the temporary
    is gone, the resume refills. A kill -9 there leaves a half temporary file: the resume refills too, says the write
    was cut off, and the next checkpoint deletes it."""
    write_array = np.lib.format.write_array
    written = []

    def second_ctrl_c_after_the_frames(file, array, **kw):
        written.append(array)
        if len(written) == 3:
            raise KeyboardInterrupt
        write_array(file, array, **kw)

    monkeypatch.setattr(np.lib.format, "write_array", second_ctrl_c_after_the_frames)
    args = catch_args(tmp_path, run_name="catch", batch_size=4)
    stop_at_call(monkeypatch, dqn_atari, "epsilon_greedy", 400)
    with pytest.raises(KeyboardInterrupt):
        dqn_atari.train(args, Catch(1))
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path / "catch"))[:1] == ["checkpoint.pt"] and len(os.listdir(tmp_path / "catch")) == 2
    checkpoint = torch.load(tmp_path / "catch" / "checkpoint.pt", weights_only=True)
    with open(tmp_path / "catch" / "replay_memory.bin.tmp", "wb") as file:  # what kill -9 would leave
        write_array(file, np.array([checkpoint["run_id"], 400]))
        write_array(file, np.zeros((1, 5000, 84, 84), np.uint8)[:, :100])
    capsys.readouterr()
    _, run = resumed_buffer(args, checkpoint)
    assert "refilling the replay memory (its write at the stop was cut off)" in capsys.readouterr().out
    run.save(400)
    assert "replay_memory.bin.tmp" not in os.listdir(tmp_path / "catch")


def test_a_stop_in_the_last_step_saves_no_memory_that_nothing_would_read(tmp_path, monkeypatch):
    args = catch_args(tmp_path, run_name="catch", batch_size=4, total_timesteps=400)
    stop_at_call(monkeypatch, dqn_atari, "epsilon_greedy", 400)
    with pytest.raises(dqn_atari.Terminated):
        dqn_atari.train(args, Catch(1))
    assert torch.load(tmp_path / "catch" / "checkpoint.pt", weights_only=True)["global_step"] == 400
    assert [p for p in os.listdir(tmp_path / "catch") if "tfevents" not in p] == ["checkpoint.pt"]


@pytest.mark.parametrize("where", ["acting", "env step", "store", "update", "target copy"])
def test_a_stop_anywhere_in_a_step_takes_effect_between_whole_steps(tmp_path, monkeypatch, where):
    """SIGTERM sent in the middle of step 400, at each of its parts (it syncs the target network and makes an
    update). The checkpoint holds whole steps: a target network that is the Q-network's whole copy (no update
    follows the sync in that step), and one Adam step per 2 agent steps past 200, as many as step 400 is due."""
    envs = Catch(1)
    args = catch_args(tmp_path, run_name="catch", batch_size=4)
    if where == "target copy":  # between the second and third of its 10 tensors, in the 2nd sync (step 400)
        make_learner = dqn_atari.make_learner

        def learner_with_a_watched_target(*a):
            q_network, target_network, optimizer = make_learner(*a)
            parameters, syncs = target_network.parameters, []

            def parameters_stopping_mid_copy():
                syncs.append(1)
                for i, parameter in enumerate(parameters()):
                    if len(syncs) == 2 and i == 2:
                        os.kill(os.getpid(), signal.SIGTERM)
                    yield parameter

            target_network.parameters = parameters_stopping_mid_copy
            return q_network, target_network, optimizer

        monkeypatch.setattr(dqn_atari, "make_learner", learner_with_a_watched_target)
    else:
        owner, name, call = {"acting": (dqn_atari, "epsilon_greedy", 400), "env step": (envs, "step", 400),
                             "store": (ReplayBuffer, "add", 400), "update": (dqn_atari, "td_loss", 100)}[where]
        stop_at_call(monkeypatch, owner, name, call)
    with pytest.raises(dqn_atari.Terminated):
        dqn_atari.train(args, envs)
    saved = torch.load(tmp_path / "catch" / "checkpoint.pt", weights_only=True)
    assert saved["global_step"] == 400
    for name, tensor in saved["model"].items():
        assert torch.equal(saved["target_model"][name], tensor), name
    assert all(state["step"] == 400 // 2 - 200 // 2 for state in saved["optimizer"]["state"].values())


def test_a_failed_write_leaves_the_last_checkpoint_intact(tmp_path):
    path = str(tmp_path / "checkpoint.pt")
    dqn_atari.write_atomically(path, lambda file: torch.save({"global_step": 1}, file))

    def save_half_then_fail(file):
        file.write(b"half a checkpoint")
        raise OSError("No space left on device")

    with pytest.raises(OSError):
        dqn_atari.write_atomically(path, save_half_then_fail)
    assert torch.load(path, weights_only=True)["global_step"] == 1 and os.listdir(tmp_path) == ["checkpoint.pt"]

    args = catch_args(tmp_path, run_name="run")  # a run's checkpoint with weights that are not all finite
    learner = dqn_atari.make_learner(3, args, torch.device("cpu"))
    run = dqn_atari.Run(args, learner, np.random.default_rng(0).spawn(2), ReplayBuffer(100, 1))
    run.save(5)
    with torch.no_grad():
        learner[0].network[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="not finite at step 6"):
        run.save(6)
    assert torch.load(run.path, weights_only=True)["global_step"] == 5


def test_the_loss_is_read_only_where_it_is_logged(tmp_path, monkeypatch):
    """On a GPU each read of the loss waits for its update: the NaN check reads it where the log does (each 25th
    update), not after every update."""
    reads = []

    class Watched(torch.Tensor):
        def item(self):
            reads.append("item")
            return super().item()

        def isfinite(self):
            reads.append("isfinite")
            return super().isfinite()

    td_loss = dqn_atari.td_loss

    def watched_td_loss(*a):
        loss, q_values = td_loss(*a)
        return loss.as_subclass(Watched), q_values

    monkeypatch.setattr(dqn_atari, "td_loss", watched_td_loss)
    dqn_atari.train(catch_args(tmp_path, total_timesteps=400, learning_starts=200, batch_size=4), Catch(1))
    assert reads == ["item"] * (100 // 25)  # 100 updates (one per 2 steps past 200), 4 reads


def test_a_nan_loss_stops_the_run_with_exit_1_and_keeps_the_last_finite_checkpoint(tmp_path, monkeypatch, capsys):
    calls = []
    td_loss = dqn_atari.td_loss

    def nan_from_the_100th_update(*a):
        calls.append(1)
        loss, q_values = td_loss(*a)
        return (loss * float("nan") if len(calls) >= 100 else loss), q_values

    monkeypatch.setattr(dqn_atari, "td_loss", nan_from_the_100th_update)
    with pytest.raises(SystemExit) as exit_info:
        run_main(monkeypatch, "--env-id", "PongNoFrameskip-v4", "--total-timesteps", "3000", "--learning-starts", "200",
                 "--buffer-size", "5000", "--checkpoint-frequency", "400", "--run-dir", str(tmp_path), "--run-name",
                 "nan", "--no-cuda")
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("\n") == 1
    assert "the TD loss is nan at step 600" in err  # the 100th update: step 200 + 100 * 4
    saved = torch.load(tmp_path / "nan" / "checkpoint.pt", weights_only=True)  # after 50 updates
    assert saved["global_step"] == 400 and all(w.isfinite().all() for w in saved["model"].values())


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_full_disk_at_a_checkpoint_stops_the_run_with_one_line_and_keeps_the_one_before(tmp_path, monkeypatch,
                                                                                            capsys):
    """The kernel's own ENOSPC: after the first checkpoint, the next one's temporary file is /dev/full. An OSError
    that is not the disk's (a bug) keeps its traceback."""
    save = dqn_atari.Run.save

    def save_then_fill_the_disk(run, step, stop=None):
        save(run, step, stop)
        os.symlink("/dev/full", run.path + ".tmp")

    monkeypatch.setattr(dqn_atari.Run, "save", save_then_fill_the_disk)
    with pytest.raises(SystemExit) as exit_info:
        run_main(monkeypatch, "--env-id", "PongNoFrameskip-v4", "--total-timesteps", "2500", "--learning-starts",
                 "2400", "--buffer-size", "5000", "--checkpoint-frequency", "1000", "--run-dir", str(tmp_path),
                 "--run-name", "full", "--no-cuda")
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and err.count("\n") == 1 and "No space left on device" in err, err
    assert torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["global_step"] == 1000
    assert not os.path.lexists(tmp_path / "full" / "checkpoint.pt.tmp")

    monkeypatch.setattr(dqn_atari, "train", lambda *a, **kw: open(tmp_path / "no" / "such"))  # a bug, not the disk
    with pytest.raises(FileNotFoundError):  # keeps its traceback
        run_main(monkeypatch, "--env-id", "PongNoFrameskip-v4", "--run-dir", str(tmp_path), "--no-cuda")


def test_a_buffer_larger_than_memory_is_refused_at_once(tmp_path):
    """The replay memory takes all of its memory when the run starts, so a buffer that cannot fit ends the run in
    its first seconds, with one line, never hours in as the ring fills."""
    result = run_script("--buffer-size", "100_000_000_000", "--run-dir", str(tmp_path))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "out of memory (--buffer-size 100,000,000,000 takes 707000.00 GB)" in result.stderr
    assert not os.listdir(tmp_path)  # no run folder, no networks


def test_the_replay_memory_is_written_when_it_is_made():
    """Its pages are the process's own from the start, not mapped as the ring fills: in a fresh process, making
    it raises the resident memory by its size, where an np.zeros array of that size (mapped lazily) does not."""
    code = "\n".join([
        "import numpy as np, dqn_atari",
        "rss = lambda: next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS:')) * 1024",
        "before = rss()",
        "lazy = np.zeros((20_000, 84, 84), np.uint8)",
        "after_lazy = rss()",
        "rb = dqn_atari.ReplayBuffer(20_000, 1)",
        "print(after_lazy - before, rss() - after_lazy, rb.frames.nbytes)"])
    result = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(SCRIPT), capture_output=True,
                            text=True, timeout=300)
    lazy, made, nbytes = map(int, result.stdout.split())
    assert lazy < 0.1 * nbytes and made > 0.9 * nbytes, (lazy, made, nbytes)


# ---------------------------------------------------------------- the benchmark


def test_benchmark_prints_its_table_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    argv = ["--no-cuda", "--paths", "fast", "--env-steps", "400", "--updates", "5", "--learning-starts", "300",
            "--loop-steps", "300", "--buffer-size", "1000", "--json", str(out)]
    result = subprocess.run([sys.executable, BENCHMARK, *argv], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "| loop steps/s, learning phase |" in result.stdout
    row = json.loads(out.read_text())["rows"][0]
    assert min(row[key] for key in ["env_sps", "act_sps", "updates_per_s", "loop_sps", "peak_rss_mib"]) > 0
    update_sps = 4 * row["updates_per_s"]  # train_frequency 4
    assert row["bound_sequential"] == pytest.approx(1 / (1 / row["env_sps"] + 1 / update_sps))
    assert row["bound_overlapped"] == pytest.approx(min(row["env_sps"], update_sps))
    assert row["bound_with_acting"] == pytest.approx(1 / (1 / row["env_sps"] + 1 / row["act_sps"] + 1 / update_sps))
    assert row["efficiency_sequential"] == pytest.approx(row["loop_sps"] / row["bound_sequential"])


def test_benchmark_rejects_bad_arguments_with_exit_2(monkeypatch, capsys):
    for i, argv in enumerate([["--num-envs", "0"], ["--updates", "0"], ["--loop-steps", "5"], ["--paths", "quick"]]):
        code, out, err = refusal(BENCHMARK, argv, monkeypatch, capsys, i == 0)
        said = (out + err).lower()
        assert code == 2 and ("error" in said or "invalid" in said) and "loop steps/s" not in said, argv


# ---------------------------------------------------------------- results/pong.pt
PONG_AGENT = os.path.join(os.path.dirname(SCRIPT), "results", "pong.pt")


def test_the_shipped_pong_agent_wins_a_game():
    """results/pong.pt, the agent of the README's Pong run, plays a whole game greedily from a reset seed it was
    neither trained nor evaluated on, and wins it: the game ends when a side reaches 21, the agent's side first."""
    saved, q_network = dqn_atari.load_checkpoint(PONG_AGENT)
    assert set(saved) == {"model", "args", "global_step"} and saved["args"]["env_id"] == "PongNoFrameskip-v4"
    envs = dqn_atari.make_env("PongNoFrameskip-v4", 1)
    obs, _ = envs.reset(seed=2026)
    points = {1: 0, -1: 0}  # the agent's, the built-in opponent's
    for _ in range(27_000):  # the game's frame cap, 108,000 frames, in agent steps
        obs, reward, terminated, truncated, _ = envs.step(q_network(torch.as_tensor(obs)).argmax(1).numpy())
        if reward[0]:
            points[int(np.sign(reward[0]))] += 1
        if terminated[0] or truncated[0]:
            break
    envs.close()
    assert terminated[0] and points[1] == 21 and points[-1] < 21, points


# ---------------------------------------------------------------- results/activity.py
def test_activity_counts_filters_that_fire_somewhere_on_some_state_and_sees_a_dead_network_answer_the_same():
    """Hand-set layers, where the answer is known: conv1's filter 0 sees only an 8x8 bright patch in one of three
    states, filters 1-3 fire everywhere, the rest nowhere (4 of 32); 128 of 512 dense units fire. On Pong's own
    states (none a game's zero-padded start), a network whose conv1 is silent gives the same Q-values everywhere."""
    activity = script_module(ACTIVITY)
    torch.manual_seed(0)
    q_network = QNetwork(6)
    conv1, dense = q_network.network[0], q_network.network[7]
    states = torch.zeros(3, 4, 84, 84, dtype=torch.uint8)
    states[1, 0, :8, :8] = 255
    with torch.no_grad():
        conv1.weight.zero_()
        conv1.weight[0, 0] = 1 / 64  # 1 on the patch, at one position of one state
        conv1.bias.copy_(torch.where(torch.arange(32) < 4, 1.0, -1.0))
        conv1.bias[0] = -0.5
        dense.weight.zero_()
        dense.bias.copy_(torch.where(torch.arange(512) < 128, 1.0, -1.0))
    firing, _ = activity.activity(q_network, states)
    assert firing[0] == 4 / 32 and firing[3] == 128 / 512

    states = activity.game_states("PongNoFrameskip-v4", count=64)
    assert states.shape == (64, 4, 84, 84) and states.dtype == torch.uint8
    assert (states.flatten(2).amax(dim=2) > 0).all()  # each of the 4 frames a real one
    torch.manual_seed(0)
    q_network = QNetwork(6)
    firing, spread = activity.activity(q_network, states)
    assert firing[0] > 0 and spread > 0  # a fresh network sees the screen
    with torch.no_grad():
        q_network.network[0].bias.fill_(-1e3)  # no filter fires on pixels in [0, 1]: the rest sees zeros
    firing, spread = activity.activity(q_network, states)
    assert firing[0] == 0 and spread == 0


def test_activity_refuses_bad_input_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "bogus.pt").write_text("not a checkpoint")
    for i, argv in enumerate([[], [str(tmp_path / "missing.pt")], [str(tmp_path / "bogus.pt")]]):
        code, out, err = refusal(ACTIVITY, argv, monkeypatch, capsys, i == 0)
        assert code == 2 and out == "", argv
        assert err.startswith("activity.py: error: ") and len(err.splitlines()) == 1, argv


# ---------------------------------------------------------------- the README's figures of the file
def test_the_readme_gives_the_files_line_counts_and_its_number_of_tests():
    """The README's opening says which lines the algorithm takes, how many the run management takes after its
    fence, and how many tests there are; each is counted here afresh."""
    readme = open(os.path.join(os.path.dirname(SCRIPT), "README.md")).read()
    lines = open(SCRIPT).read().splitlines()
    fence = next(number for number, line in enumerate(lines, 1) if line.startswith("# ====="))
    algorithm_ends = max(number for number, line in enumerate(lines[: fence - 1], 1) if line.strip())
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", __file__],
                               capture_output=True, text=True, timeout=120).stdout.splitlines()[-1]
    tests = int(collected.split()[0])  # "106 tests collected in 2.9s"
    assert f"(lines 1-{algorithm_ends})" in readme and f"({len(lines) - fence + 1} lines)" in readme
    assert f"The tests: {tests} tests" in readme, collected
