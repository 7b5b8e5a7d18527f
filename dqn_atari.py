"""DQN for Atari (Mnih et al. 2015) in one file. Run it: python dqn_atari.py --env-id PongNoFrameskip-v4"""

import copy
import ctypes
import datetime
import os
import signal
import subprocess
import sys
import time
import warnings
from collections import deque, namedtuple
from contextlib import suppress
from dataclasses import asdict, dataclass, fields

import ale_py
import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import tyro
from torch.utils.tensorboard import SummaryWriter


@dataclass
class Args:
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment (part of the run name)"""
    seed: int = 1
    """seed of the networks, the exploration, the replay sampling and the envs"""
    torch_deterministic: bool = True
    """if toggled, cuDNN picks deterministic kernels"""
    cuda: bool = True
    """if toggled, train on a GPU when one is present"""
    fast: bool = True
    """channels-last convolutions, fused Adam and, on a GPU, CUDA graphs: the same updates, sooner"""
    run_dir: str = "runs"
    """each run writes its TensorBoard logs and its checkpoint to <run_dir>/<run_name>/"""
    run_name: str = ""
    """the run's folder in run_dir (default: <env_id>__<exp_name>__<seed>__<unix time>)"""
    checkpoint_frequency: int = 100_000
    """agent steps between checkpoints (0: at the end only); each replaces the last atomically"""
    resume: str = ""
    """go on with the run that saved this checkpoint, in its folder; "auto": with
    <run_dir>/<run_name>/checkpoint.pt if it is there, else start that run (one command for a job
    that a scheduler restarts). A finished run does nothing unless --total-timesteps is larger.
    Other flags given with it must equal the saved run's, except --total-timesteps,
    --checkpoint-frequency, --cuda, --fast, --eval-episodes and --eval-epsilon"""
    eval_checkpoint: str = ""
    """if set, evaluate this checkpoint on the game it was trained on, then exit (no training)"""
    env_id: str = "BreakoutNoFrameskip-v4"
    """any Atari id gymnasium knows, e.g. PongNoFrameskip-v4 or ALE/Pong-v5 (sticky actions)"""
    total_timesteps: int = 10_000_000
    """agent steps to train for, summed over all envs (one step is 4 frames)"""
    num_envs: int = 1
    """envs stepped together in C++ threads; the replay ratio does not depend on it"""
    learning_rate: float = 1e-4
    """Adam's learning rate"""
    buffer_size: int = 1_000_000
    """replay memory, in transitions (about 7 KB each)"""
    gamma: float = 0.99
    """the discount factor"""
    tau: float = 1.0
    """target network update rate (1.0: copy the weights)"""
    target_network_frequency: int = 1000
    """agent steps between target network updates"""
    batch_size: int = 32
    """transitions per gradient step"""
    start_e: float = 1.0
    """epsilon at the start of training"""
    end_e: float = 0.01
    """epsilon after the exploration phase"""
    exploration_fraction: float = 0.10
    """fraction of total_timesteps over which epsilon falls from start_e to end_e"""
    learning_starts: int = 80_000
    """agent steps of experience collected before the first gradient step"""
    train_frequency: int = 4
    """agent steps between gradient steps"""
    eval_episodes: int = 10
    """full games played after training (0: no evaluation)"""
    eval_epsilon: float = 0.05
    """epsilon of the evaluation games"""


def atari_spec(env_id):
    spec = gym.registry.get(env_id)  # `import ale_py` registered the Atari ids
    if spec is None or spec.entry_point != "ale_py.env:AtariEnv":
        raise ValueError(f"{env_id!r} is not an Atari env id (e.g. PongNoFrameskip-v4, ALE/Pong-v5); list them "
                         'with: python -c "import ale_py, gymnasium; gymnasium.pprint_registry()"')
    return spec


def make_env(env_id, num_envs, max_episode_frames=None):
    """ale-py's C++ vector env with the preprocessing of the DQN papers (no OpenCV, no Python wrappers)."""
    game = atari_spec(env_id).kwargs  # the game, its sticky actions (v5: 0.25) and its action set
    return ale_py.vector_env.AtariVectorEnv(
        game=game["game"], num_envs=num_envs,
        repeat_action_probability=game["repeat_action_probability"], full_action_space=game["full_action_space"],
        max_num_frames_per_episode=max_episode_frames or game["max_num_frames_per_episode"],  # 108,000: 30 min
        noop_max=30, use_fire_reset=True,  # random starts: up to 30 no-ops; FIRE where a game waits for it
        frameskip=4, maxpool=True,  # act every 4th frame, whatever the id says; max over the last two: sprites flicker
        img_height=84, img_width=84, grayscale=True, stack_num=4,  # 4 frames show motion; zeros before the first
        reward_clipping=False,  # keep the game's score for logging; the TD target clips
        episodic_life=False,  # ale-py's episodic life resets the game: we mark life losses in the loop instead
    )


class QNetwork(nn.Module):
    """The Nature-DQN CNN: a stack of 4 84x84 frames in, one Q-value per action out."""
    def __init__(self, num_actions):
        super().__init__()
        self.network = nn.Sequential(
            nn.Conv2d(4, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(64 * 7 * 7, 512), nn.ReLU(),
            nn.Linear(512, num_actions),
        )

    def forward(self, x):
        return self.network(x.float() / 255.0)  # uint8 in: frames stay 1 byte per pixel until here

    @torch.no_grad()
    def greedy(self, x):
        """The action of the highest Q-value, for each stack in x (no autograd: this only plays)."""
        return self(x).argmax(dim=1)


Batch = namedtuple("Batch", "obs actions rewards next_obs dones")  # dones: 1.0 where the TD target stops


class ReplayBuffer:
    """Uniform replay that stores each frame once: ~7 KB per transition instead of 28 KB (obs + next_obs).

    Each env writes frames into a ring of its own. The transition at slot j reads obs from frames j-3..j and
    next_obs from j-2..j+1: a step costs one new frame. An episode's first stack is written whole (zero padding
    and all), so no stack reaches into the episode before, and a truncated episode keeps its true last frame."""

    @staticmethod
    def bytes_needed(capacity, num_envs, frame_shape=(84, 84)):
        """The bytes of the arrays below: a frame, an action, a reward and 2 flags a slot."""
        return capacity // num_envs * num_envs * (int(np.prod(frame_shape)) + 8 + 4 + 1 + 1)

    def __init__(self, capacity, num_envs, frame_shape=(84, 84), stack=4, seed=None):
        self.slots, self.stack = capacity // num_envs, stack  # per env: envs add in lockstep
        if self.slots <= stack:
            raise ValueError(f"buffer capacity {capacity} is too small for {num_envs} envs")
        self.frames = np.zeros((num_envs, self.slots, *frame_shape), np.uint8)
        self.actions = np.zeros((num_envs, self.slots), np.int64)
        self.rewards = np.zeros((num_envs, self.slots), np.float32)
        self.dones = np.zeros((num_envs, self.slots), np.bool_)
        self.valid = np.zeros((num_envs, self.slots), np.bool_)  # slot starts a transition whose frames are all here
        self.written = np.zeros(num_envs, np.int64)  # frames written per env, ever
        self.rng = np.random.default_rng(seed)

    def _write(self, env, frame):
        slot = self.written[env] % self.slots
        self.frames[env, slot] = frame
        # Gone with the old frame: the transitions at this slot and stack-1 slots on (earlier writes took those between)
        self.valid[env, slot] = self.valid[env, (slot + self.stack - 1) % self.slots] = False
        self.written[env] += 1

    def add(self, obs, next_obs, actions, rewards, terminations, truncations):
        """Adds one step of every env. Truncations are not stored: a truncated step bootstraps like any other."""
        # NEXT_STEP autoreset spends the step after a game over on the reset (action ignored, reward 0). Its
        # next_obs is a fresh stack, not obs moved on by one frame: it is no transition, and is skipped.
        moves_on = (next_obs[:, :-1] == obs[:, 1:]).all(axis=(1, 2, 3))
        for env in np.flatnonzero(moves_on):
            last_frames = (self.written[env] - np.arange(self.stack, 0, -1)) % self.slots
            if self.written[env] < self.stack or not np.array_equal(self.frames[env, last_frames], obs[env]):
                for frame in obs[env]:  # a new episode: its first stack is not yet in the ring
                    self._write(env, frame)
            slot = (self.written[env] - 1) % self.slots  # holds the newest frame of obs
            self._write(env, next_obs[env, -1])
            self.actions[env, slot], self.rewards[env, slot] = actions[env], rewards[env]
            self.dones[env, slot], self.valid[env, slot] = terminations[env], True

    def sample(self, batch_size):
        assert self.written.any(), "the replay buffer holds no transition yet"  # one is valid once a frame is in
        num_envs, used = len(self.frames), min(self.written.max(), self.slots)
        envs, slots = np.empty(0, np.int64), np.empty(0, np.int64)
        while len(envs) < batch_size:  # draw slots, keep the valid ones: uniform over the stored transitions
            e, j = self.rng.integers(num_envs, size=batch_size), self.rng.integers(used, size=batch_size)
            keep = self.valid[e, j]
            envs, slots = np.concatenate([envs, e[keep]]), np.concatenate([slots, j[keep]])
        envs, slots = envs[:batch_size], slots[:batch_size]
        window = (slots[:, None] + np.arange(1 - self.stack, 2)) % self.slots  # frames j-3 .. j+1
        frames = self.frames[envs[:, None], window]
        return Batch(frames[:, :-1], self.actions[envs, slots], self.rewards[envs, slots], frames[:, 1:],
                     self.dones[envs, slots].astype(np.float32))


def linear_schedule(start_e, end_e, duration, t):
    """Epsilon falls linearly from start_e to end_e over duration steps, then stays at end_e."""
    return max(start_e + (end_e - start_e) * t / duration, end_e)


def to_device(x, device):
    """A numpy array as a tensor on the device; to a GPU through pinned memory, so the copy leaves the host free."""
    if device.type == "cpu":
        return torch.from_numpy(x)
    return torch.from_numpy(np.ascontiguousarray(x)).pin_memory().to(device, non_blocking=True)


def epsilon_greedy(greedy, obs, epsilon, num_actions, rng, device):
    """One batched greedy(obs) picks the action of every env; each env explores with probability epsilon instead."""
    actions = rng.integers(num_actions, size=len(obs))
    exploit = rng.random(len(obs)) >= epsilon
    if exploit.any():  # skipped while epsilon is 1: nothing to compute
        actions[exploit] = greedy(to_device(obs, device)).cpu().numpy()[exploit]  # a GPU's one wait per step
    return actions


def td_loss(q_network, target_network, batch, gamma):
    """Huber loss between Q(s, a) and r + gamma * max_a' Q_target(s', a'), not bootstrapped past a terminal."""
    with torch.no_grad():
        next_q = target_network(batch.next_obs).max(dim=1).values
        td_target = batch.rewards + gamma * next_q * (1.0 - batch.dones)
    q_values = q_network(batch.obs).gather(1, batch.actions.unsqueeze(1)).squeeze(1)
    # Huber is the Nature paper's error clipping: TD errors beyond 1 get a gradient of 1, not of their size.
    return nn.functional.smooth_l1_loss(q_values, td_target), q_values


class CUDAGraph:
    """Calls fn as a CUDA graph: one launch replays all of its kernels, so the GPU never waits on Python between them.
    The first 3 calls run fn as written, on a side stream (capture needs warmed-up libraries); the 4th records it on
    copies of its inputs; later calls copy their inputs there and replay. Each call does fn's work exactly once."""

    def __init__(self, fn):
        self.fn, self.calls, self.graph, self.side = fn, 0, torch.cuda.CUDAGraph(), torch.cuda.Stream()

    def __call__(self, *inputs):
        self.calls += 1
        if self.calls <= 3:
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                outputs = self.fn(*inputs)
            torch.cuda.current_stream().wait_stream(self.side)
            return outputs
        if self.calls == 4:
            self.inputs = [x.clone() for x in inputs]
            with torch.cuda.graph(self.graph):
                self.outputs = self.fn(*self.inputs)
        for fixed, x in zip(self.inputs, inputs):
            fixed.copy_(x)
        self.graph.replay()
        return self.outputs  # the same tensors each call: read them before the next


def make_learner(num_actions, args, device, checkpoint=None):
    """The Q-network, its target network, their optimizer (from a checkpoint's state where one is
    given), and the two functions the loop calls: greedy (acting) and update (one gradient step).
    args.fast changes how fast they run, not what they compute (a test compares the two)."""
    layout = torch.channels_last if args.fast else torch.contiguous_format  # NHWC: faster convolutions (14% on CPU)
    q_network = QNetwork(num_actions).to(device, memory_format=layout)
    target_network = copy.deepcopy(q_network)
    graphs = args.fast and device.type == "cuda"
    if args.fast and device.type == "cpu" and sys.platform == "linux":
        # Keep freed memory in the process: glibc returns big blocks to the OS, and each update then faults them back
        # in (~700 page faults, ~6% of an update here). -3: M_MMAP_THRESHOLD (32 MB at most), -1: M_TRIM_THRESHOLD.
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 32 << 20), libc.mallopt(-1, 2**31 - 1)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate, fused=args.fast, capturable=graphs)
    if checkpoint is not None:
        q_network.load_state_dict(checkpoint["model"])
        target_network.load_state_dict(checkpoint["target_model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        optimizer.param_groups[0].update(fused=args.fast, capturable=graphs)  # this run's path
    warnings.filterwarnings("ignore", "This instance was constructed with capturable=True")  # the 3 warm-up calls

    def update(*batch):
        loss, q_values = td_loss(q_network, target_network, Batch(*batch), args.gamma)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.detach(), q_values.detach().mean()  # tensors: reading one makes the host wait for a GPU

    graphed = CUDAGraph if graphs else lambda fn: fn
    return q_network, target_network, optimizer, graphed(q_network.greedy), graphed(update)


def evaluate(q_network, env_id, episodes, epsilon, device, seed):
    """Plays `episodes` full games on fresh envs, one game per env so that long games are not undercounted."""
    envs, rng = make_env(env_id, episodes), np.random.default_rng(seed)
    obs, _ = envs.reset(seed=seed)
    scores, over = np.zeros(envs.num_envs), np.zeros(envs.num_envs, np.bool_)
    while not over.all():
        actions = epsilon_greedy(q_network.greedy, obs, epsilon, envs.single_action_space.n, rng, device)
        obs, rewards, terminations, truncations, _ = envs.step(actions)
        scores += np.where(over, 0, rewards)
        over |= terminations | truncations
    print(f"eval: {scores.mean():.2f} +- {scores.std():.2f} over {episodes} games of {env_id}")
    return scores


def git(*argv):
    """What a git command prints about this file, run in its folder; "" where there is no git."""
    folder, name = os.path.split(os.path.abspath(__file__))
    try:
        return subprocess.run(["git", *argv, "--", name], cwd=folder, capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        return ""


def produced_by(device):
    """What made a checkpoint: this file's last commit (in a git repository), libraries, device."""
    commit = git("log", "-1", "--format=%H")
    if commit and git("status", "--porcelain"):
        commit += " + uncommitted changes"
    return {
        "git_commit": commit or None,
        "torch": str(torch.__version__),
        "gymnasium": gym.__version__,
        "ale_py": ale_py.__version__,
        "device": str(device),
    }


def save_checkpoint(path, checkpoint):
    """Writes to a temporary file beside path, then renames it over path: a kill at any instant (a
    crash, kill -9, a second Ctrl-C) leaves the last complete checkpoint readable. Weights that are
    not all finite are never written."""
    if not all(weights.isfinite().all() for weights in checkpoint["model"].values()):
        step = checkpoint["global_step"]
        raise FloatingPointError(f"the Q-network's weights are not finite at step {step:,}")
    temporary = path + ".tmp"
    with open(temporary, "wb") as file:
        torch.save(checkpoint, file)
        file.flush()
        os.fsync(file.fileno())  # on the disk before the rename: a power cut keeps one whole file
    os.replace(temporary, path)  # atomic


def pick_device(args):
    if args.cuda and not torch.cuda.is_available():
        print("no GPU found: running on the CPU")
    return torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit or preemption, docker stop, kill): stop as on Ctrl-C."""


def raise_terminated(signum, frame):
    raise Terminated()


def train(args, envs=None, checkpoint=None):
    """Trains DQN on make_env's envs, or on `envs` (a test's synthetic game), from the start or from
    a checkpoint that train saved; returns the network and the buffer."""
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = pick_device(args)
    env_name = args.env_id.replace("/", "-")
    run_name = args.run_name or f"{env_name}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_path = os.path.join(args.run_dir, run_name)
    checkpoint_path = os.path.join(run_path, "checkpoint.pt")
    start_step = checkpoint["global_step"] if checkpoint else 0
    # A resumed run drops what its stopped process logged after the checkpoint: each step once.
    writer = SummaryWriter(run_path, purge_step=start_step + 1 if checkpoint else None)
    if checkpoint is None:
        table = "\n".join(f"|{key}|{value}|" for key, value in asdict(args).items())
        writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")

    envs = make_env(args.env_id, args.num_envs) if envs is None else envs
    num_envs, num_actions = envs.num_envs, envs.single_action_space.n
    learner = make_learner(num_actions, args, device, checkpoint)
    q_network, target_network, optimizer, greedy, update = learner
    rng, replay_rng = np.random.default_rng(args.seed).spawn(2)  # independent streams: acting, replay sampling
    if checkpoint:  # the streams go on where they were, they do not start again from the seed
        rng.bit_generator.state, replay_rng.bit_generator.state = checkpoint["rng"]
    rb = ReplayBuffer(args.buffer_size, num_envs, seed=replay_rng)
    made_by = produced_by(device)

    def save(step):
        save_checkpoint(checkpoint_path, {
            "model": q_network.state_dict(), "target_model": target_network.state_dict(),
            "optimizer": optimizer.state_dict(), "global_step": step, "args": asdict(args),
            "rng": (rng.bit_generator.state, replay_rng.bit_generator.state),
            "recent_returns": list(recent_returns), "produced_by": made_by,
        })

    # The loop's state: the stacks the agent sees, lives left, the envs whose next step only resets, each game so far.
    obs, infos = envs.reset(seed=args.seed + start_step)
    lives, resetting = infos["lives"], np.zeros(num_envs, np.bool_)
    episode_return, episode_length = np.zeros(num_envs), np.zeros(num_envs, np.int64)
    recent_returns = deque(checkpoint["recent_returns"] if checkpoint else [], maxlen=20)
    global_step, updates = start_step, 0
    exploration_steps = args.exploration_fraction * args.total_timesteps
    learning_starts = start_step + args.learning_starts  # a resumed run first refills its buffer
    last_print, last_print_step = time.time(), global_step
    stop = None  # Ctrl-C or SIGTERM, if one ends the loop
    going_on = f", going on from step {start_step:,}" if checkpoint else ""
    print(f"logs and checkpoints go to {run_path}{going_on}")
    try:
        while global_step < args.total_timesteps:
            epsilon = linear_schedule(args.start_e, args.end_e, exploration_steps, global_step)
            actions = epsilon_greedy(greedy, obs, epsilon, num_actions, rng, device)
            envs.send(actions)  # the envs step in their own threads while the update below runs

            steps_before, global_step = global_step, global_step + num_envs
            if global_step > learning_starts:
                # one gradient step per train_frequency agent steps, however many envs made them
                for _ in range(global_step // args.train_frequency - steps_before // args.train_frequency):
                    loss, q_mean = update(*(to_device(x, device) for x in rb.sample(args.batch_size)))
                    updates += 1
                    if not loss.isfinite():  # on a GPU: a wait for the update, while the envs step
                        message = f"the TD loss is {loss.item()} at step {global_step:,}"
                        raise FloatingPointError(message)
                    if updates % 25 == 0:  # reading a result from a GPU makes the host wait: now and then only
                        writer.add_scalar("losses/td_loss", loss.item(), global_step)
                        writer.add_scalar("losses/q_values", q_mean.item(), global_step)
                if global_step // args.target_network_frequency > steps_before // args.target_network_frequency:
                    for target_param, param in zip(target_network.parameters(), q_network.parameters()):
                        target_param.data.copy_(args.tau * param.data + (1.0 - args.tau) * target_param.data)
            next_obs, rewards, terminations, truncations, infos = envs.recv()

            game_over = terminations | truncations
            episode_return += rewards  # the raw score, all lives: the number papers report
            episode_length += ~resetting
            for env in np.flatnonzero(game_over):
                recent_returns.append(float(episode_return[env]))
                writer.add_scalar("charts/episodic_return", episode_return[env], global_step)
                writer.add_scalar("charts/episodic_length", episode_length[env], global_step)
            episode_return[game_over], episode_length[game_over] = 0, 0

            life_lost = infos["lives"] < lives  # the game goes on, but the value of the lost life is 0
            rb.add(obs, next_obs, actions, np.clip(rewards, -1, 1), terminations | life_lost, truncations)
            obs, lives, resetting = next_obs, infos["lives"], game_over

            every = args.checkpoint_frequency
            if every and global_step // every > steps_before // every:
                save(global_step)
            if time.time() - last_print >= 10:
                sps = (global_step - last_print_step) / (time.time() - last_print)
                writer.add_scalar("charts/SPS", sps, global_step)
                writer.add_scalar("charts/epsilon", epsilon, global_step)
                print(f"step {global_step:,}/{args.total_timesteps:,}  {sps:,.0f} steps/s  epsilon {epsilon:.3f}  "
                      f"return {np.mean(recent_returns or [np.nan]):.1f} ({len(recent_returns)} games)  "
                      f"{datetime.timedelta(seconds=int((args.total_timesteps - global_step) / sps))} left")
                last_print, last_print_step = time.time(), global_step
    except KeyboardInterrupt as interrupt:
        stop = interrupt
    finally:
        writer.flush()  # whatever ends the loop (a NaN loss, a crash), its logs are on the disk
    save(global_step)  # at the end, and on Ctrl-C or SIGTERM: what a run promises
    if stop is not None:
        print("SIGTERM, " if isinstance(stop, Terminated) else "Ctrl-C, ", end="")
    print(f"step {global_step:,}: checkpoint saved to {checkpoint_path}, logs flushed")
    if stop is not None:
        raise stop

    if args.eval_episodes:
        scores = evaluate(q_network, args.env_id, args.eval_episodes, args.eval_epsilon, device, args.seed + num_envs)
        for i, score in enumerate(scores):
            writer.add_scalar("eval/episodic_return", score, i)
    writer.close()
    return q_network, rb


def not_a_checkpoint(path, error):
    return f"cannot read a checkpoint of this script from {path} ({type(error).__name__})"


def read_checkpoint(path):
    """A checkpoint that train saved, as a dict of tensors and plain values, or a ValueError."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        checkpoint["args"], checkpoint["model"], checkpoint["global_step"]
    except Exception as error:  # whatever the file holds, the user needs one line, not a traceback
        raise ValueError(not_a_checkpoint(path, error)) from None
    return checkpoint


def load_checkpoint(path):
    """The Q-network and env id saved by train, or a ValueError."""
    checkpoint = read_checkpoint(path)
    try:
        q_network = QNetwork(make_env(checkpoint["args"]["env_id"], 1).single_action_space.n)
        q_network.load_state_dict(checkpoint["model"])
    except Exception as error:
        raise ValueError(not_a_checkpoint(path, error)) from None
    return q_network, checkpoint["args"]["env_id"]


# What a resumed run may change: its length, how often it saves, where it runs, how it is evaluated.
RESUME_MAY_CHANGE = {
    "total_timesteps", "checkpoint_frequency", "cuda", "fast", "eval_episodes", "eval_epsilon"
}


def flags_given(argv):
    """The Args fields a command line names (--learning-rate 1e-3, --gamma=0.9, --no-cuda)."""
    names = {field.name for field in fields(Args)}
    given = set()
    for token in argv:
        if token.startswith("--"):
            name = token[2:].split("=")[0].replace("-", "_")
            given.add(name[3:] if name.startswith("no_") and name[3:] in names else name)
    return given


def resume_args(args, argv):
    """For --resume: the saved run's args, with the changes argv may make, and its checkpoint; or
    (args, None) where --resume auto finds no checkpoint yet. A ValueError for any other flag that
    differs from the saved run's."""
    auto = args.resume == "auto"
    if auto and not args.run_name:
        raise ValueError("--resume auto needs --run-name: the name a restart finds the run by")
    path = os.path.join(args.run_dir, args.run_name, "checkpoint.pt") if auto else args.resume
    if auto and not os.path.exists(path):
        return args, None
    checkpoint = read_checkpoint(path)
    given = flags_given(argv)
    run_dir, run_name = os.path.split(os.path.dirname(os.path.abspath(path)))
    if auto:
        run_dir, run_name = args.run_dir, args.run_name
    changes = {name: getattr(args, name) for name in given & RESUME_MAY_CHANGE}
    where = {"resume": args.resume, "run_dir": run_dir, "run_name": run_name}
    try:
        resumed = Args(**{**checkpoint["args"], **changes, **where})
    except TypeError:
        raise ValueError(f"{path} was saved by another version of this script") from None
    for name in sorted(given - RESUME_MAY_CHANGE - {"resume"}):
        if getattr(args, name) != getattr(resumed, name):
            raise ValueError(
                f"--{name.replace('_', '-')} {getattr(args, name)} differs from the resumed run's "
                f"{getattr(resumed, name)} (see --resume in --help for what may change)")
    return resumed, checkpoint


def available_memory(proc="/proc", cgroup_root="/sys/fs/cgroup"):
    """The bytes this process can still take: the smaller of the system's MemAvailable and, for its
    cgroup and each one above it, the limit minus the usage (what SLURM --mem, Docker and
    Kubernetes set); None where none can be read."""
    free = []
    with suppress(OSError, KeyError, ValueError), open(os.path.join(proc, "meminfo")) as meminfo:
        fields_kb = dict(line.split(":") for line in meminfo)
        free.append(int(fields_kb["MemAvailable"].split()[0]) * 1024)
    with suppress(OSError), open(os.path.join(proc, "self", "cgroup")) as cgroups:
        for line in cgroups:  # "0::/path" for cgroup v2, "4:memory:/path" for v1
            _, controllers, path = line.strip().split(":", 2)
            if controllers == "":
                folder, limit_file, usage_file = cgroup_root, "memory.max", "memory.current"
            elif "memory" in controllers.split(","):
                folder = os.path.join(cgroup_root, "memory")
                limit_file, usage_file = "memory.limit_in_bytes", "memory.usage_in_bytes"
            else:
                continue
            parts = [part for part in path.split("/") if part]
            for depth in range(len(parts), -1, -1):  # a limit may be set on any cgroup above
                with suppress(OSError, ValueError):  # a missing file, or "max": no limit there
                    with open(os.path.join(folder, *parts[:depth], limit_file)) as limit:
                        with open(os.path.join(folder, *parts[:depth], usage_file)) as usage:
                            free.append(int(limit.read()) - int(usage.read()))
    return min(free, default=None)


def check_memory(args, available):
    """A ValueError if the replay buffer cannot fit in `available` bytes, a warning if it fits with
    less than 1 GiB to spare: the buffer fills hours into a run, where the OOM killer strikes."""
    needed = ReplayBuffer.bytes_needed(args.buffer_size, args.num_envs)
    if available is None:
        return
    if needed > available:
        per_env = available // ReplayBuffer.bytes_needed(args.num_envs, args.num_envs)
        raise ValueError(
            f"--buffer-size {args.buffer_size:,} needs {needed:,} bytes of memory, "
            f"{available:,} are available: the largest --buffer-size that fits is "
            f"{per_env * args.num_envs:,}")
    if available - needed < 2**30:
        print(f"warning: the replay buffer will take {needed:,} of {available:,} bytes available")


def check_args(args):
    """Raises a ValueError naming the first argument that would make a wrong or failing run."""
    atari_spec(args.env_id)
    positive = "total_timesteps num_envs batch_size learning_rate train_frequency target_network_frequency".split()
    checks = [(getattr(args, name) > 0, f"{name} must be positive") for name in positive] + [
        (args.batch_size <= args.buffer_size, "batch_size must not exceed buffer_size"),
        (args.buffer_size >= 5 * args.num_envs, "buffer_size must hold at least 5 transitions per env"),
        (args.learning_starts >= max(args.batch_size, args.num_envs),
         "learning_starts must be at least batch_size and num_envs"),
        (args.learning_starts < args.total_timesteps, "learning_starts must be below total_timesteps"),
        (0 <= args.gamma <= 1, "gamma must be in [0, 1]"),
        (0 < args.tau <= 1, "tau must be in (0, 1]"),
        (0 < args.exploration_fraction <= 1, "exploration_fraction must be in (0, 1]"),
        (0 <= args.end_e <= args.start_e <= 1, "need 0 <= end_e <= start_e <= 1"),
        (0 <= args.eval_epsilon <= 1, "eval_epsilon must be in [0, 1]"),
        (args.eval_episodes >= bool(args.eval_checkpoint), "eval_episodes must be >= 0 (>= 1 with eval_checkpoint)"),
        (args.checkpoint_frequency >= 0, "checkpoint_frequency must be >= 0"),
        (not (args.resume and args.eval_checkpoint), "give --resume or --eval-checkpoint"),
    ]
    failed = [message for ok, message in checks if not ok]
    if failed:
        raise ValueError(failed[0])


def main():
    args = tyro.cli(Args)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines reach a log file as they are printed
    program = os.path.basename(sys.argv[0])
    try:
        checkpoint = None
        if args.resume:  # the saved run's args, with the few changes the command line may make
            args, checkpoint = resume_args(args, sys.argv[1:])
        check_args(args)
        evaluated = load_checkpoint(args.eval_checkpoint) if args.eval_checkpoint else None
        if evaluated is None:
            check_memory(args, available_memory())
    except ValueError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        sys.exit(2)
    if checkpoint and checkpoint["global_step"] >= args.total_timesteps:
        print(f"the run in {os.path.join(args.run_dir, args.run_name)} is done: it reached its "
              f"{args.total_timesteps:,} steps (a larger --total-timesteps extends it)")
        return
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        if evaluated is None:
            train(args, checkpoint=checkpoint)
        else:
            (q_network, env_id), device = evaluated, pick_device(args)
            evaluate(q_network.to(device), env_id, args.eval_episodes, args.eval_epsilon, device, args.seed)
    except KeyboardInterrupt as stop:  # the checkpoint and the logs were saved on the way out
        sys.exit(143 if isinstance(stop, Terminated) else 130)  # 128 + the signal, as shells say
    except FloatingPointError as error:
        kept = "the checkpoint on disk is the last with finite weights"
        print(f"{program}: error: {error}; {kept}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
