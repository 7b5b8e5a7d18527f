"""DQN for Atari (Mnih et al. 2015) in one file. Run it: python dqn_atari.py --env-id PongNoFrameskip-v4

In the paper's order: the arguments, the environment, the Q-network, the replay memory, epsilon-greedy
acting, the TD loss, the training loop and evaluation. Then two fenced asides that the algorithm reads
without (the speed layer; the checkpoints and checks of long runs), and the command line."""

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

# ---------------------------------------------------------------- the arguments


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
    """channels-last convolutions and fused Adam: the same updates, sooner (--no-fast: the plain path)"""
    cuda_graphs: bool = False
    """on a GPU, replay acting and the update as CUDA graphs (not yet verified on a GPU: opt-in)"""
    run_dir: str = "runs"
    """each run writes its TensorBoard logs and its checkpoint to <run_dir>/<run_name>/"""
    run_name: str = ""
    """the run's folder in run_dir (default: <env_id>__<exp_name>__<seed>__<unix time>)"""
    checkpoint_frequency: int = 100_000
    """agent steps between checkpoints (0: at the end only); each replaces the last atomically"""
    resume: str = ""
    """go on with the run that saved this checkpoint, in its folder ("auto": with <run_dir>/<run_name>/checkpoint.pt
    if it is there, else start that run). Other flags must equal the saved run's, except --total-timesteps (a larger
    one extends a finished run), --checkpoint-frequency, --cuda, --fast, --cuda-graphs and --eval-*"""
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


# ---------------------------------------------------------------- the environment


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
        noop_max=30,  # random starts: up to 30 no-ops after a reset
        use_fire_reset=True,  # FIRE at a reset, where a game waits for it (after a lost life: fire_action)
        frameskip=4,  # act every 4th frame, whatever the id says
        maxpool=True,  # max over the last two frames: sprites flicker
        img_height=84, img_width=84, grayscale=True, stack_num=4,  # 4 frames show motion; zeros before the first
        reward_clipping=False,  # keep the game's score for logging; the TD target clips
        episodic_life=False,  # ale-py's episodic life resets the game: the loop marks life losses instead
    )


def fire_action(envs):
    """FIRE's index in the env's action set, or None. Games like Breakout wait for FIRE after a lost life; the
    loop sends it, as the published scores' FireReset wrapper does (a test's synthetic env has no `ale`)."""
    action_set = list(envs.ale.get_action_set()) if hasattr(envs, "ale") else []
    return action_set.index(ale_py.Action.FIRE) if ale_py.Action.FIRE in action_set else None


# ---------------------------------------------------------------- the Q-network


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


# ---------------------------------------------------------------- the replay memory

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
        self.slots = capacity // num_envs  # per env: envs add in lockstep
        self.stack = stack
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
        self.valid[env, slot] = False
        self.valid[env, (slot + self.stack - 1) % self.slots] = False
        self.written[env] += 1

    def add(self, obs, next_obs, actions, rewards, terminations, truncations, resetting=None):
        """Adds one step of every env but those in `resetting`: NEXT_STEP autoreset spends the step after a game over
        on the reset (action ignored, reward 0), which is no transition. Without `resetting`, a row whose next_obs
        is not obs moved on by one frame is taken for a reset step. Truncations are not stored: they bootstrap."""
        if resetting is None:
            resetting = ~(next_obs[:, :-1] == obs[:, 1:]).all(axis=(1, 2, 3))
        for env in np.flatnonzero(~resetting):
            last_frames = (self.written[env] - np.arange(self.stack, 0, -1)) % self.slots
            if self.written[env] < self.stack or not np.array_equal(self.frames[env, last_frames], obs[env]):
                for frame in obs[env]:  # a new episode: its first stack is not yet in the ring
                    self._write(env, frame)
            slot = (self.written[env] - 1) % self.slots  # holds the newest frame of obs
            self._write(env, next_obs[env, -1])
            self.actions[env, slot] = actions[env]
            self.rewards[env, slot] = rewards[env]
            self.dones[env, slot] = terminations[env]
            self.valid[env, slot] = True

    def sample(self, batch_size):
        assert self.written.any(), "the replay buffer holds no transition yet"  # one is valid once a frame is in
        num_envs = len(self.frames)
        used = min(self.written.max(), self.slots)
        envs = np.empty(0, np.int64)
        slots = np.empty(0, np.int64)
        while len(envs) < batch_size:  # draw slots, keep the valid ones: uniform over the stored transitions
            e = self.rng.integers(num_envs, size=batch_size)
            j = self.rng.integers(used, size=batch_size)
            keep = self.valid[e, j]
            envs = np.concatenate([envs, e[keep]])
            slots = np.concatenate([slots, j[keep]])
        envs, slots = envs[:batch_size], slots[:batch_size]
        window = (slots[:, None] + np.arange(1 - self.stack, 2)) % self.slots  # frames j-3 .. j+1
        frames = self.frames[envs[:, None], window]
        dones = self.dones[envs, slots].astype(np.float32)
        return Batch(frames[:, :-1], self.actions[envs, slots], self.rewards[envs, slots], frames[:, 1:], dones)


# ---------------------------------------------------------------- epsilon-greedy acting


def linear_schedule(start_e, end_e, duration, t):
    """Epsilon falls linearly from start_e to end_e over duration steps, then stays at end_e."""
    return max(start_e + (end_e - start_e) * t / duration, end_e)


def epsilon_greedy(greedy, obs, epsilon, num_actions, rng, device):
    """One batched greedy(obs) picks the action of every env; each env explores with probability epsilon instead."""
    actions = rng.integers(num_actions, size=len(obs))
    exploit = rng.random(len(obs)) >= epsilon
    if exploit.any():  # skipped while epsilon is 1: nothing to compute
        actions[exploit] = greedy(to_device(obs, device)).cpu().numpy()[exploit]  # a GPU's one wait per step
    return actions


# ---------------------------------------------------------------- the TD loss, and the learner that minimizes it


def td_loss(q_network, target_network, batch, gamma):
    """Huber loss between Q(s, a) and r + gamma * max_a' Q_target(s', a'), not bootstrapped past a terminal."""
    with torch.no_grad():
        next_q = target_network(batch.next_obs).max(dim=1).values
        td_target = batch.rewards + gamma * next_q * (1.0 - batch.dones)
    q_values = q_network(batch.obs).gather(1, batch.actions.unsqueeze(1)).squeeze(1)
    # Huber is the Nature paper's error clipping: TD errors beyond 1 get a gradient of 1, not of their size.
    return nn.functional.smooth_l1_loss(q_values, td_target), q_values


def make_learner(num_actions, args, device, checkpoint=None):
    """The Q-network, its target network, their optimizer (from a checkpoint's state where one is given), and
    the two functions the loop calls: greedy (acting) and update (one gradient step). args.fast and
    args.cuda_graphs change how fast they run, not what they compute (a test compares the paths)."""
    layout = torch.channels_last if args.fast else torch.contiguous_format
    q_network = QNetwork(num_actions).to(device, memory_format=layout)
    target_network = copy.deepcopy(q_network)
    graphs = args.cuda_graphs and device.type == "cuda"
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate, fused=args.fast, capturable=graphs)
    if checkpoint is not None:
        q_network.load_state_dict(checkpoint["model"])
        target_network.load_state_dict(checkpoint["target_model"])
        optimizer.load_state_dict(copy.deepcopy(checkpoint["optimizer"]))  # Adam would train the saved tensors
        optimizer.param_groups[0].update(fused=args.fast, capturable=graphs)  # this run's path

    def update(*batch):
        loss, q_values = td_loss(q_network, target_network, Batch(*batch), args.gamma)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.detach(), q_values.detach().mean()  # tensors: reading one makes the host wait for a GPU

    graphed = CudaGraphCall if graphs else lambda fn: fn
    return q_network, target_network, optimizer, graphed(q_network.greedy), graphed(update)


# ---------------------------------------------------------------- the training loop


def train(args, envs=None, checkpoint=None):
    """Trains DQN on make_env's envs, or on `envs` (a test's synthetic game), from the start or from
    a checkpoint that train saved; returns the Q-network and the replay buffer."""
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = pick_device(args)
    set_process_options(args, device)
    run_name = args.run_name or f"{args.env_id.replace('/', '-')}__{args.exp_name}__{args.seed}__{int(time.time())}"
    run_path = os.path.join(args.run_dir, run_name)
    checkpoint_path = os.path.join(run_path, "checkpoint.pt")
    start_step = checkpoint["global_step"] if checkpoint else 0
    # A resumed run drops what its stopped process logged after the checkpoint: each step once.
    writer = SummaryWriter(run_path, purge_step=start_step + 1 if checkpoint else None)
    if checkpoint is None:
        table = "\n".join(f"|{key}|{value}|" for key, value in asdict(args).items())
        writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")

    envs = make_env(args.env_id, args.num_envs) if envs is None else envs
    num_envs = envs.num_envs
    num_actions = envs.single_action_space.n
    fire = fire_action(envs)
    q_network, target_network, optimizer, greedy, update = make_learner(num_actions, args, device, checkpoint)
    rng, replay_rng = np.random.default_rng(args.seed).spawn(2)  # independent streams: acting, replay sampling
    if checkpoint:  # the streams go on where they were, they do not start again from the seed
        rng.bit_generator.state, replay_rng.bit_generator.state = checkpoint["rng"]
    rb = ReplayBuffer(args.buffer_size, num_envs, seed=replay_rng)
    exploration_steps = args.exploration_fraction * args.total_timesteps
    learning_starts = start_step + args.learning_starts  # a resumed run first refills its buffer
    made_by = produced_by(device)

    # The loop's state, all of it:
    obs, infos = envs.reset(seed=args.seed + start_step)  # the stacks the agent sees (a resumed run: new games)
    lives = infos["lives"]  # each env's lives left
    serve = np.zeros(num_envs, np.bool_)  # the envs that just lost a life: FIRE serves their next ball
    resetting = np.zeros(num_envs, np.bool_)  # the envs whose next step only resets their game
    episode_return = np.zeros(num_envs)  # each game's score so far
    episode_length = np.zeros(num_envs, np.int64)  # each game's agent steps so far
    recent_returns = deque(checkpoint["recent_returns"] if checkpoint else [], maxlen=20)  # the last 20 games
    global_step = start_step  # agent steps, summed over the envs
    updates = 0  # gradient steps this process has made
    last_print = time.time()  # when the last progress line was printed
    last_print_step = global_step  # and at which step

    def save():  # what it takes to go on: see the README's Long runs
        save_checkpoint(checkpoint_path, {
            "model": q_network.state_dict(), "target_model": target_network.state_dict(),
            "optimizer": optimizer.state_dict(), "global_step": global_step, "args": asdict(args),
            "rng": (rng.bit_generator.state, replay_rng.bit_generator.state),
            "recent_returns": list(recent_returns), "produced_by": made_by,
        })

    print(f"logs and checkpoints go to {run_path}" + (f", going on from step {start_step:,}" if checkpoint else ""))
    stop = None  # Ctrl-C or SIGTERM, if one ends the loop
    try:
        while global_step < args.total_timesteps:
            # Act: epsilon-greedy, but FIRE where a life was just lost.
            epsilon = linear_schedule(args.start_e, args.end_e, exploration_steps, global_step)
            actions = epsilon_greedy(greedy, obs, epsilon, num_actions, rng, device)
            if fire is not None:
                actions[serve] = fire

            # Step the envs; log the games that end.
            next_obs, rewards, terminations, truncations, infos = envs.step(actions)
            steps_before = global_step
            global_step += num_envs
            game_over = terminations | truncations
            life_lost = infos["lives"] < lives  # the game goes on, but the value of the lost life is 0
            episode_return += rewards  # the raw score, all lives: the number papers report
            episode_length += ~resetting
            for env in np.flatnonzero(game_over):
                recent_returns.append(float(episode_return[env]))
                writer.add_scalar("charts/episodic_return", episode_return[env], global_step)
                writer.add_scalar("charts/episodic_length", episode_length[env], global_step)
            episode_return[game_over] = 0
            episode_length[game_over] = 0

            # Store: clipped rewards and lost lives are for the TD target; a truncation bootstraps.
            dones = terminations | life_lost
            rb.add(obs, next_obs, actions, np.clip(rewards, -1, 1), dones, truncations, resetting=resetting)
            obs = next_obs
            lives = infos["lives"]
            serve = life_lost & ~game_over
            resetting = game_over

            # Learn: one gradient step per train_frequency agent steps past learning_starts, however many envs.
            if global_step > learning_starts:
                first = max(steps_before, learning_starts)
                for _ in range(global_step // args.train_frequency - first // args.train_frequency):
                    loss, q_mean = update(*(to_device(x, device) for x in rb.sample(args.batch_size)))
                    updates += 1
                    if not loss.isfinite():  # on a GPU, a wait for the update
                        raise FloatingPointError(f"the TD loss is {loss.item()} at step {global_step:,}")
                    if updates % 25 == 0:  # reading a result from a GPU makes the host wait: now and then only
                        writer.add_scalar("losses/td_loss", loss.item(), global_step)
                        writer.add_scalar("losses/q_values", q_mean.item(), global_step)
                if global_step // args.target_network_frequency > steps_before // args.target_network_frequency:
                    for target_param, param in zip(target_network.parameters(), q_network.parameters()):
                        target_param.data.copy_(args.tau * param.data + (1.0 - args.tau) * target_param.data)

            every = args.checkpoint_frequency
            if every and global_step // every > steps_before // every:
                save()
            if time.time() - last_print >= 10:
                sps = (global_step - last_print_step) / (time.time() - last_print)
                writer.add_scalar("charts/SPS", sps, global_step)
                writer.add_scalar("charts/epsilon", epsilon, global_step)
                print(f"step {global_step:,}/{args.total_timesteps:,}  {sps:,.0f} steps/s  epsilon {epsilon:.3f}  "
                      f"return {np.mean(recent_returns or [np.nan]):.1f} ({len(recent_returns)} games)  "
                      f"{datetime.timedelta(seconds=int((args.total_timesteps - global_step) / sps))} left")
                last_print = time.time()
                last_print_step = global_step
    except KeyboardInterrupt as interrupt:
        stop = interrupt
    finally:
        writer.flush()  # whatever ends the loop (a NaN loss, a crash), its logs are on the disk
    save()  # at the end, and on Ctrl-C or SIGTERM: what a run promises
    stopped_by = "" if stop is None else "SIGTERM, " if isinstance(stop, Terminated) else "Ctrl-C, "
    print(f"{stopped_by}step {global_step:,}: checkpoint saved to {checkpoint_path}, logs flushed")
    if stop is not None:
        raise stop

    if args.eval_episodes:
        scores = evaluate(q_network, args.env_id, args.eval_episodes, args.eval_epsilon, device, args.seed + num_envs)
        for i, score in enumerate(scores):
            writer.add_scalar("eval/episodic_return", score, i)
    writer.close()
    return q_network, rb


# ---------------------------------------------------------------- evaluation


def evaluate(q_network, env_id, episodes, epsilon, device, seed):
    """Plays `episodes` full games on fresh envs, one game per env so that long games are not undercounted.
    FIRE follows a lost life, as in training."""
    envs = make_env(env_id, episodes)
    rng = np.random.default_rng(seed)
    fire = fire_action(envs)
    obs, infos = envs.reset(seed=seed)
    lives = infos["lives"]
    serve = np.zeros(episodes, np.bool_)
    scores = np.zeros(episodes)
    over = np.zeros(episodes, np.bool_)
    while not over.all():
        actions = epsilon_greedy(q_network.greedy, obs, epsilon, envs.single_action_space.n, rng, device)
        if fire is not None:
            actions[serve] = fire
        obs, rewards, terminations, truncations, infos = envs.step(actions)
        scores += np.where(over, 0, rewards)
        over |= terminations | truncations
        serve = infos["lives"] < lives
        lives = infos["lives"]
    print(f"eval: {scores.mean():.2f} +- {scores.std():.2f} over {episodes} games of {env_id}")
    return scores


def load_checkpoint(path):
    """The Q-network and env id of a checkpoint that train saved, or a ValueError."""
    checkpoint, q_network = read_checkpoint(path)
    return q_network, checkpoint["args"]["env_id"]


# ---------------------------------------------------------------- aside: the speed layer
# The same computation, sooner. On the 2-core CPU of the README's Speed section, channels-last convolutions
# (14% faster), fused Adam and glibc keeping freed memory make an update 1.24x faster (40.1 against 32.3
# a second) and the loop 1.36x (135 against 99 steps/s). On a GPU, pinned copies let the host run on, and
# CUDA graphs replay all of an update's kernels at once (opt-in: not yet measured).


def set_process_options(args, device):
    """The process-wide settings of the fast path, in one place."""
    if args.fast and device.type == "cpu" and sys.platform == "linux":
        # glibc hands big freed blocks back to the OS, and each update faults them in again (~700 page faults,
        # ~6% of an update here). Keep them: -3 is M_MMAP_THRESHOLD (32 MB at most), -1 M_TRIM_THRESHOLD.
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 32 << 20)
        libc.mallopt(-1, 2**31 - 1)
    if args.cuda_graphs:  # the warm-up calls of capturable Adam warn about what the graph then does right
        warnings.filterwarnings("ignore", "This instance was constructed with capturable=True")


def to_device(x, device):
    """A numpy array as a tensor on the device; to a GPU through pinned memory, so the copy leaves the host free."""
    if device.type == "cpu":
        return torch.from_numpy(x)
    return torch.from_numpy(np.ascontiguousarray(x)).pin_memory().to(device, non_blocking=True)


class CudaGraphCall:
    """Calls fn as a CUDA graph: one launch replays all of its kernels. The first 3 calls run fn as written, on a
    side stream (capture needs warmed-up libraries); the 4th records it on copies of its inputs; later calls copy
    their inputs there and replay. Each call does fn's work exactly once. Not yet verified on a GPU."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = 0
        self.graph = torch.cuda.CUDAGraph()
        self.side = torch.cuda.Stream()

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
        for recorded, x in zip(self.inputs, inputs):
            if (x.shape, x.dtype) != (recorded.shape, recorded.dtype):  # copy_ would broadcast a smaller batch
                raise ValueError(f"a CUDA graph recorded for {tuple(recorded.shape)} {recorded.dtype} was given "
                                 f"{tuple(x.shape)} {x.dtype}")
            recorded.copy_(x)
        self.graph.replay()
        return self.outputs  # the same tensors each call: read them before the next


# ---------------------------------------------------------------- aside: long runs, which stop and go on


def produced_by(device):
    """What made a checkpoint: this file's last git commit (None outside a repository), libraries, device."""
    folder, name = os.path.split(os.path.abspath(__file__))
    git = ["git", "-C", folder]
    try:
        commit = subprocess.run([*git, "log", "-1", "--format=%H", "--", name], capture_output=True, text=True).stdout
        changed = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", name], capture_output=True).returncode == 1
    except OSError:  # no git
        commit, changed = "", False
    commit = commit.strip() or None
    if commit and changed:
        commit += " + uncommitted changes"
    versions = {"torch": str(torch.__version__), "gymnasium": gym.__version__, "ale_py": ale_py.__version__}
    return {"git_commit": commit, **versions, "device": str(device)}


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


def read_checkpoint(path):
    """A checkpoint that train saved (a dict of tensors and plain values) and its Q-network, or a ValueError."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        missing = {"model", "args", "global_step"} - set(checkpoint)
        if missing:
            raise KeyError(f"no {missing}")
        q_network = QNetwork(list(checkpoint["model"].values())[-1].shape[0])  # the output bias comes last
        q_network.load_state_dict(checkpoint["model"])
    except Exception as error:  # whatever the file holds, the user needs one line, not a traceback
        raise ValueError(f"cannot read a checkpoint of this script from {path} ({type(error).__name__})") from None
    return checkpoint, q_network


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit or preemption, docker stop, kill): stop as on Ctrl-C."""


def raise_terminated(signum, frame):
    raise Terminated()


# What a resumed run may change: its length, how often it saves, where and how fast it runs, its evaluation.
RESUME_MAY_CHANGE = {"total_timesteps", "checkpoint_frequency", "cuda", "fast", "cuda_graphs", "eval_episodes",
                     "eval_epsilon"}


def resume_args(args, argv):
    """For --resume: the saved run's args, with what argv changes, and its checkpoint; or (args, None) where
    --resume auto finds no checkpoint yet. A ValueError for a change to anything but RESUME_MAY_CHANGE."""
    auto = args.resume == "auto"
    if auto and not args.run_name:
        raise ValueError("--resume auto needs --run-name: the name a restart finds the run by")
    path = os.path.join(args.run_dir, args.run_name, "checkpoint.pt") if auto else args.resume
    if auto and not os.path.exists(path):
        return args, None
    checkpoint, _ = read_checkpoint(path)
    run_dir, run_name = (args.run_dir, args.run_name) if auto else os.path.split(os.path.dirname(os.path.abspath(path)))
    try:
        saved = Args(**{**checkpoint["args"], "run_dir": run_dir, "run_name": run_name, "resume": args.resume})
    except TypeError:
        raise ValueError(f"{path} was saved by another version of this script") from None
    resumed = tyro.cli(Args, args=argv, default=saved)  # the command line again, the saved run's args as defaults
    for field in fields(Args):
        name = field.name
        if name not in RESUME_MAY_CHANGE and getattr(resumed, name) != getattr(saved, name):
            raise ValueError(f"--{name.replace('_', '-')} {getattr(resumed, name)} differs from the resumed run's "
                             f"{getattr(saved, name)} (see --resume in --help for what may change)")
    return resumed, checkpoint


def available_memory(proc="/proc", cgroup_root="/sys/fs/cgroup"):
    """The bytes this process can still take: the smaller of the system's MemAvailable and, for its
    cgroup and each one above it, the limit minus the usage (what SLURM --mem, Docker and
    Kubernetes set); None where none can be read."""
    free = []
    with suppress(OSError, KeyError, ValueError), open(os.path.join(proc, "meminfo")) as meminfo:
        free.append(int(dict(line.split(":") for line in meminfo)["MemAvailable"].split()[0]) * 1024)
    with suppress(OSError), open(os.path.join(proc, "self", "cgroup")) as cgroups:
        for line in cgroups:  # "0::/path" for cgroup v2, "4:memory:/path" for v1
            _, controllers, path = line.strip().split(":", 2)
            v1 = "memory" in controllers.split(",")
            if controllers and not v1:
                continue
            root = os.path.join(cgroup_root, "memory") if v1 else cgroup_root
            limit = "memory.limit_in_bytes" if v1 else "memory.max"
            usage = "memory.usage_in_bytes" if v1 else "memory.current"
            parts = [part for part in path.split("/") if part]
            for depth in range(len(parts) + 1):  # a limit may be set on any cgroup above this one
                folder = os.path.join(root, *parts[:depth])
                with suppress(OSError, ValueError):  # a missing file, or "max": no limit there
                    with open(os.path.join(folder, limit)) as limit_file:
                        with open(os.path.join(folder, usage)) as usage_file:
                            free.append(int(limit_file.read()) - int(usage_file.read()))
    return min(free, default=None)


def check_memory(args, available):
    """A ValueError if the replay buffer cannot fit in `available` bytes, a warning if it fits with
    less than 1 GiB to spare: the buffer fills hours into a run, where the OOM killer strikes."""
    if available is None:
        return
    needed = ReplayBuffer.bytes_needed(args.buffer_size, args.num_envs)
    if needed > available:
        fits = available // ReplayBuffer.bytes_needed(args.num_envs, args.num_envs) * args.num_envs
        raise ValueError(f"--buffer-size {args.buffer_size:,} needs {needed:,} bytes of memory, {available:,} are "
                         f"available: the largest --buffer-size that fits is {fits:,}")
    if available - needed < 2**30:
        print(f"warning: the replay buffer will take {needed:,} of {available:,} bytes available")


# ---------------------------------------------------------------- the command line


def pick_device(args):
    if args.cuda and not torch.cuda.is_available():
        print("no GPU found: running on the CPU")
    return torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")


def check_args(args):
    """Raises a ValueError naming, as the user types it, the first flag that would make a wrong or failing run."""
    atari_spec(args.env_id)
    checks = [
        (args.total_timesteps > 0, "--total-timesteps must be positive"),
        (args.num_envs > 0, "--num-envs must be positive"),
        (args.batch_size > 0, "--batch-size must be positive"),
        (args.learning_rate > 0, "--learning-rate must be positive"),
        (args.train_frequency > 0, "--train-frequency must be positive"),
        (args.target_network_frequency > 0, "--target-network-frequency must be positive"),
        (args.batch_size <= args.buffer_size, "--batch-size must not exceed --buffer-size"),
        (args.buffer_size >= 5 * args.num_envs, "--buffer-size must hold at least 5 transitions per env"),
        (args.learning_starts >= args.batch_size, "--learning-starts must be at least --batch-size"),
        (args.learning_starts >= args.num_envs, "--learning-starts must be at least --num-envs"),
        (args.learning_starts < args.total_timesteps, "--learning-starts must be below --total-timesteps"),
        (0 <= args.gamma <= 1, "--gamma must be in [0, 1]"),
        (0 < args.tau <= 1, "--tau must be in (0, 1]"),
        (0 < args.exploration_fraction <= 1, "--exploration-fraction must be in (0, 1]"),
        (0 <= args.end_e <= args.start_e <= 1, "need 0 <= --end-e <= --start-e <= 1"),
        (0 <= args.eval_epsilon <= 1, "--eval-epsilon must be in [0, 1]"),
        (args.eval_episodes >= 0, "--eval-episodes must be >= 0"),
        (args.eval_episodes > 0 or not args.eval_checkpoint, "--eval-checkpoint needs --eval-episodes >= 1"),
        (args.checkpoint_frequency >= 0, "--checkpoint-frequency must be >= 0"),
        (not (args.resume and args.eval_checkpoint), "give --resume or --eval-checkpoint, not both"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


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
            q_network, env_id = evaluated
            device = pick_device(args)
            evaluate(q_network.to(device), env_id, args.eval_episodes, args.eval_epsilon, device, args.seed)
    except KeyboardInterrupt as stop:  # the checkpoint and the logs were saved on the way out
        sys.exit(143 if isinstance(stop, Terminated) else 130)  # 128 + the signal, as shells say
    except FloatingPointError as error:
        print(f"{program}: error: {error}; the checkpoint on disk is the last with finite weights", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
