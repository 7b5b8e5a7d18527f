"""DQN for Atari (Mnih et al. 2015) in one file. Run it: python dqn_atari.py --env-id PongNoFrameskip-v4
An agent step is one action in one env (4 frames); the replay ratio, gradient steps per agent step.

The algorithm first, in the paper's order: arguments, environment, Q-network, replay memory, epsilon-greedy
acting, TD loss, training loop, evaluation. Then, fenced off, what long runs need around it."""

import contextlib
import copy
import datetime
import errno
import io
import os
import signal
import sys
import time
from collections import deque, namedtuple
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
class Args:  # the defaults are CleanRL's; the README's Design choices say where they differ from the paper
    exp_name: str = os.path.basename(__file__)[: -len(".py")]  # part of the run's name
    seed: int = 1  # seed of the networks, the exploration, the replay sampling and the envs
    torch_deterministic: bool = True  # cuDNN picks deterministic kernels (--no-torch-deterministic: its fastest)
    cuda: bool = True  # train on a GPU when one is present (--no-cuda: on the CPU)
    fast: bool = True  # channels-last convolutions and fused Adam: the same updates, sooner
    run_dir: str = "runs"  # each run writes its logs and its checkpoint to <run_dir>/<run_name>/
    run_name: str = ""  # the run's folder; '' names it <env_id>__<exp_name>__<seed>__<unix time>
    checkpoint_frequency: int = 100_000  # agent steps between checkpoints (0: at the end only)
    resume: str = ""  # go on with the run of this checkpoint or folder; 'auto': <run_dir>/<run_name>'s, if any
    eval_checkpoint: str = ""  # play the games of this checkpoint's final evaluation (flags given override), exit
    env_id: str = "BreakoutNoFrameskip-v4"  # any Atari id: PongNoFrameskip-v4, ALE/Pong-v5, ...
    total_timesteps: int = 10_000_000  # agent steps, summed over all envs
    num_envs: int = 1  # envs stepped together in C++ threads; the replay ratio stays the same
    learning_rate: float = 1e-4  # Adam's learning rate
    adam_eps: float = 1e-8  # Adam's epsilon (the README's Pong recipe: 1.5e-4, as in Rainbow)
    buffer_size: int = 1_000_000  # replay memory in transitions (~7 KB each, taken at the start)
    gamma: float = 0.99  # the discount factor
    tau: float = 1.0  # target network update rate (1.0: copy the weights)
    target_network_frequency: int = 1000  # agent steps between target network updates
    batch_size: int = 32  # transitions per gradient step
    start_e: float = 1.0  # epsilon at the start of training
    end_e: float = 0.01  # epsilon after the exploration phase
    exploration_fraction: float = 0.10  # fraction of total_timesteps over which epsilon falls
    learning_starts: int = 80_000  # agent steps of experience collected before the first update
    train_frequency: int = 4  # agent steps between gradient steps
    eval_episodes: int = 10  # full games played after training (0: no evaluation)
    eval_epsilon: float = 0.05  # epsilon of the evaluation games


# ---------------------------------------------------------------- the environment
def make_env(env_id, num_envs):
    """ale-py's C++ vector env with the preprocessing of the DQN papers (no OpenCV, no wrappers)."""
    spec = gym.registry.get(env_id)  # `import ale_py` registered the Atari ids
    if spec is None or spec.entry_point != "ale_py.env:AtariEnv":
        raise ValueError(f"{env_id!r} is not an Atari env id (e.g. PongNoFrameskip-v4, ALE/Pong-v5); "
                         'list them with: python -c "import ale_py, gymnasium; gymnasium.pprint_registry()"')
    game = spec.kwargs  # game, sticky actions (v5: 0.25), action set, frame cap
    return ale_py.vector_env.AtariVectorEnv(
        game=game["game"], num_envs=num_envs,
        repeat_action_probability=game["repeat_action_probability"], full_action_space=game["full_action_space"],
        max_num_frames_per_episode=game["max_num_frames_per_episode"],  # 108,000: 30 minutes
        noop_max=30,  # random starts: up to 30 no-ops after a reset
        use_fire_reset=True,  # FIRE where a game waits for it at a reset (a lost life: fire_action)
        frameskip=4,  # act every 4th frame, whatever the id says
        maxpool=True,  # max over the last two frames: sprites flicker
        img_height=84, img_width=84, grayscale=True, stack_num=4,  # 4 frames show motion; zeros before the 1st
        reward_clipping=False,  # keep the game's score for logging; the loop clips what it stores
        episodic_life=False,  # ale-py's would reset the game: the loop marks life losses instead
        autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP,  # a game over's next step resets: the loop skips it
    )


def fire_action(envs):
    """FIRE's index in the action set, or None: Breakout waits for FIRE after a lost life (FireReset's fix)."""
    action_set = list(envs.ale.get_action_set())
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
        return self.network(x.float() / 255.0)  # uint8 in: frames stay 1 byte a pixel until here


# ---------------------------------------------------------------- the replay memory
Batch = namedtuple("Batch", "obs actions rewards next_obs dones")  # dones: 1.0 where TD stops


class ReplayBuffer:
    """Uniform replay storing each frame once (~7 KB a transition, not 28), in a ring per env: slot j's obs is
    frames j-3..j, its next_obs j-2..j+1. An episode's first stack is written whole (zero padding and all): no
    stack reaches into the episode before, and a truncated one keeps its last frame."""
    def __init__(self, capacity, num_envs, frame_shape=(84, 84), stack=4, seed=None):
        self.slots = capacity // num_envs  # per env: envs add in lockstep
        self.stack = stack
        if self.slots <= stack:
            raise ValueError(f"buffer capacity {capacity} is too small for {num_envs} envs")
        self.frames = np.empty((num_envs, self.slots, *frame_shape), np.uint8)
        self.frames.fill(0)  # every page taken now: too big for memory fails at once, not hours in
        self.actions = np.zeros((num_envs, self.slots), np.int64)
        self.rewards = np.zeros((num_envs, self.slots), np.float32)
        self.dones = np.zeros((num_envs, self.slots), np.bool_)
        self.valid = np.zeros((num_envs, self.slots), np.bool_)  # a transition starts here
        self.written = np.zeros(num_envs, np.int64)  # frames written per env, ever
        self.rng = np.random.default_rng(seed)

    def _write(self, env, frame):
        slot = self.written[env] % self.slots
        self.frames[env, slot] = frame
        # Gone with the old frame: the transitions at this slot and stack-1 on (the last writes took those between)
        self.valid[env, slot] = False
        self.valid[env, (slot + self.stack - 1) % self.slots] = False
        self.written[env] += 1

    def add(self, obs, next_obs, actions, rewards, dones, resetting):
        """Adds one step of every env but those `resetting`: NEXT_STEP autoreset spends the step after a game
        over on the reset (action ignored, reward 0), no transition. A truncation is no done: it bootstraps."""
        for env in np.flatnonzero(~resetting):
            last_frames = (self.written[env] - np.arange(self.stack, 0, -1)) % self.slots
            if self.written[env] < self.stack or not np.array_equal(self.frames[env, last_frames], obs[env]):
                for frame in obs[env]:  # a new episode: its first stack is not yet in the ring
                    self._write(env, frame)
            slot = (self.written[env] - 1) % self.slots  # holds the newest frame of obs
            self._write(env, next_obs[env, -1])
            self.actions[env, slot] = actions[env]
            self.rewards[env, slot] = rewards[env]
            self.dones[env, slot] = dones[env]
            self.valid[env, slot] = True

    def sample(self, batch_size):
        used = min(self.written.max(), self.slots)
        envs, slots = np.empty(0, np.int64), np.empty(0, np.int64)
        while len(envs) < batch_size:  # keep the valid slots drawn: uniform
            e = self.rng.integers(len(self.frames), size=batch_size)
            j = self.rng.integers(used, size=batch_size)
            keep = self.valid[e, j]
            envs = np.concatenate([envs, e[keep]])
            slots = np.concatenate([slots, j[keep]])
        envs, slots = envs[:batch_size], slots[:batch_size]
        window = (slots[:, None] + np.arange(1 - self.stack, 2)) % self.slots  # frames j-3 .. j+1
        frames = self.frames[envs[:, None], window]
        dones = self.dones[envs, slots].astype(np.float32)
        return Batch(frames[:, :-1], self.actions[envs, slots], self.rewards[envs, slots], frames[:, 1:], dones)


def to_device(x, device):
    """A numpy array as a tensor on the device; to a GPU from pinned memory, leaving the host free."""
    if device.type == "cpu":
        return torch.from_numpy(x)
    return torch.from_numpy(np.ascontiguousarray(x)).pin_memory().to(device, non_blocking=True)


# ---------------------------------------------------------------- epsilon-greedy acting
def linear_schedule(start_e, end_e, duration, t):
    """Epsilon falls linearly from start_e to end_e over duration steps, then stays at end_e."""
    return max(start_e + (end_e - start_e) * t / duration, end_e)


def epsilon_greedy(q_network, obs, epsilon, num_actions, rng, device):
    """One greedy pass picks every env's action; each env explores with probability epsilon instead."""
    actions = rng.integers(num_actions, size=len(obs))
    exploit = rng.random(len(obs)) >= epsilon
    if exploit.any():  # skipped while epsilon is 1: nothing to compute
        with torch.no_grad():  # this only plays
            actions[exploit] = q_network(to_device(obs, device)).argmax(dim=1).cpu().numpy()[exploit]
    return actions


# ---------------------------------------------------------------- the TD loss, and the learner
def td_loss(q_network, target_network, batch, gamma):
    """Huber loss of Q(s, a) against r + gamma * max_a' Q_target(s', a'), no bootstrap past a terminal."""
    with torch.no_grad():
        next_q = target_network(batch.next_obs).max(dim=1).values
        td_target = batch.rewards + gamma * next_q * (1.0 - batch.dones)
    q_values = q_network(batch.obs).gather(1, batch.actions.unsqueeze(1)).squeeze(1)
    # Huber is the Nature paper's error clipping: a TD error beyond 1 gets a gradient of 1, not its size.
    return nn.functional.smooth_l1_loss(q_values, td_target), q_values


def make_learner(num_actions, args, device):
    """The Q-network, its target network (a copy) and Adam; args.fast changes how fast they compute, not what."""
    layout = torch.channels_last if args.fast else torch.contiguous_format
    q_network = QNetwork(num_actions).to(device, memory_format=layout)
    target_network = copy.deepcopy(q_network)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate, eps=args.adam_eps, fused=args.fast)
    return q_network, target_network, optimizer


# ---------------------------------------------------------------- the training loop
def train(args, envs=None, checkpoint=None):
    """Trains DQN on make_env's envs or `envs` (a test's game), from scratch or a checkpoint; returns q_network, rb."""
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    envs = make_env(args.env_id, args.num_envs) if envs is None else envs
    num_envs = envs.num_envs
    num_actions = envs.single_action_space.n
    fire = fire_action(envs)
    rng, replay_rng = np.random.default_rng(args.seed).spawn(2)  # acting's, replay sampling's
    rb = ReplayBuffer(args.buffer_size, num_envs, seed=replay_rng)
    q_network, target_network, optimizer = make_learner(num_actions, args, device)
    run = Run(args, (q_network, target_network, optimizer), (rng, replay_rng), rb, checkpoint)
    exploration_steps = args.exploration_fraction * args.total_timesteps

    # The loop's state, all of it:
    global_step = run.start_step  # agent steps, summed over the envs
    obs, infos = envs.reset(seed=args.seed + global_step)  # what the agent sees (resumed: new games)
    lives = infos["lives"]  # each env's lives left
    serve = np.zeros(num_envs, np.bool_)  # the envs that just lost a life: FIRE serves
    resetting = np.zeros(num_envs, np.bool_)  # the envs whose next step only resets their game
    episode_return = np.zeros(num_envs)  # each game's score so far
    episode_length = np.zeros(num_envs, np.int64)  # each game's agent steps so far
    with stops_between_steps() as stops, run.writer:  # a stop ends the loop between two steps; a crash closes logs
        while global_step < args.total_timesteps and not stops:
            # Act: epsilon-greedy, but FIRE where a life was just lost.
            epsilon = linear_schedule(args.start_e, args.end_e, exploration_steps, global_step)
            actions = epsilon_greedy(q_network, obs, epsilon, num_actions, rng, device)
            if fire is not None:
                actions[serve] = fire

            # Step the envs; log the games that end.
            next_obs, rewards, terminations, truncations, infos = envs.step(actions)
            steps_before = global_step
            global_step += num_envs
            game_over = terminations | truncations
            life_lost = infos["lives"] < lives  # the game goes on, but the lost life's value is 0
            episode_return += rewards  # the raw score, all lives: the number papers report
            episode_length += ~resetting
            for env in np.flatnonzero(game_over):
                run.recent_returns.append(float(episode_return[env]))
                run.writer.add_scalar("charts/episodic_return", episode_return[env], global_step)
                run.writer.add_scalar("charts/episodic_length", episode_length[env], global_step)
            episode_return[game_over] = 0
            episode_length[game_over] = 0

            # Store: clipped rewards and lost lives are for the TD target; a truncation bootstraps.
            rb.add(obs, next_obs, actions, np.clip(rewards, -1, 1), terminations | life_lost, resetting)
            obs = next_obs
            lives = infos["lives"]
            serve = life_lost & ~game_over
            resetting = game_over

            # Learn: a gradient step per train_frequency agent steps past learning_starts.
            if global_step > run.learning_starts:  # later where a resume refills the memory
                first = max(steps_before, run.learning_starts)
                for _ in range(global_step // args.train_frequency - first // args.train_frequency):
                    batch = Batch(*(to_device(x, device) for x in rb.sample(args.batch_size)))
                    loss, q_values = td_loss(q_network, target_network, batch, args.gamma)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    run.log_update(loss, q_values, global_step)  # every 25th; a NaN loss stops the run
                if global_step // args.target_network_frequency > steps_before // args.target_network_frequency:
                    for target_param, param in zip(target_network.parameters(), q_network.parameters()):
                        target_param.data.copy_(args.tau * param.data + (1.0 - args.tau) * target_param.data)

            run.after_step(global_step, steps_before, epsilon)  # a checkpoint now and then, progress every 10 s
        run.save(global_step, stops[0] if stops else None)  # at a stop, the replay memory follows the checkpoint
    if stops:
        raise stops[0]
    return q_network, rb


# ---------------------------------------------------------------- evaluation
def evaluate(q_network, env_id, episodes, epsilon, device, seed):
    """Plays `episodes` full games on fresh envs, one per env (long games are not undercounted), FIRE as in train."""
    envs = make_env(env_id, episodes)
    rng = np.random.default_rng(seed)
    fire = fire_action(envs)
    obs, infos = envs.reset(seed=seed)
    lives = infos["lives"]
    serve = np.zeros(episodes, np.bool_)
    scores = np.zeros(episodes)
    over = np.zeros(episodes, np.bool_)
    while not over.all():
        actions = epsilon_greedy(q_network, obs, epsilon, envs.single_action_space.n, rng, device)
        if fire is not None:
            actions[serve] = fire
        obs, rewards, terminations, truncations, infos = envs.step(actions)
        scores += np.where(over, 0, rewards)
        over |= terminations | truncations
        serve = infos["lives"] < lives
        lives = infos["lives"]
    print(f"eval: {scores.mean():.2f} +- {scores.std():.2f} over {episodes} games of {env_id}")
    return scores


# ================================ run management: long runs and the command line; the algorithm reads without it
class Run:
    """A run's folder: its logs, its checkpoint (networks, Adam, random streams, step, last 20 scores), its memory."""
    def __init__(self, args, learner, rngs, rb, checkpoint=None):
        self.args, self.learner, self.rngs = args, learner, rngs
        self.memory = [rb.frames, rb.actions, rb.rewards, rb.dones, rb.valid, rb.written]  # what a stop saves
        default_name = f"{args.env_id.replace('/', '-')}__{args.exp_name}__{args.seed}__{int(time.time())}"
        args.run_name = args.run_name or default_name  # (main finds the folder in args)
        self.folder = os.path.join(args.run_dir, args.run_name)
        self.path = os.path.join(self.folder, "checkpoint.pt")
        self.memory_path = os.path.join(self.folder, "replay_memory.bin")
        self.start_step = checkpoint["global_step"] if checkpoint else 0
        self.run_id = (checkpoint or {}).get("run_id", time.time_ns())  # marks the memory file as this run's
        self.recent_returns = deque((checkpoint or {}).get("recent_returns", []), maxlen=20)  # the progress line's
        self.updates = 0  # this process's, for the logs
        if checkpoint:
            q_network, target_network, optimizer = learner
            q_network.load_state_dict(checkpoint["model"])
            target_network.load_state_dict(checkpoint["target_model"])
            state = copy.deepcopy(checkpoint["optimizer"])  # else Adam trains the checkpoint's own
            for group in state["param_groups"]:  # this run's (fused: where Adam keeps its step)
                group.update(lr=args.learning_rate, eps=args.adam_eps, fused=args.fast, capturable=False)
            optimizer.load_state_dict(state)
            for rng, saved in zip(rngs, checkpoint["rng"]):  # the streams go on where they were
                rng.bit_generator.state = saved
        # A resumed run drops what its stopped process logged after the checkpoint: each step once.
        self.writer = SummaryWriter(self.folder, purge_step=self.start_step + 1 if checkpoint else None)
        going_on = f", going on from step {self.start_step:,}" if checkpoint else ""
        print(f"logs and checkpoints go to {self.folder}{going_on}")
        refill = self.load_memory(rb) if checkpoint else None
        self.learning_starts = args.learning_starts + (self.start_step if refill else 0)
        if checkpoint:
            self.writer.add_scalar("charts/memory_refilled", float(refill is not None), self.start_step)
            print(f"refilling the replay memory ({refill}): learning goes on past step {self.learning_starts:,}"
                  if refill else f"the replay memory goes on with its {rb.valid.sum():,} transitions")
        else:
            table = "\n".join(f"|{key}|{value}|" for key, value in asdict(args).items())
            self.writer.add_text("hyperparameters", f"|param|value|\n|-|-|\n{table}")
        self.printed_at, self.printed_step = time.time(), self.start_step  # for the progress line

    def log_update(self, loss, q_values, step):
        self.updates += 1
        if self.updates % 25 == 0:  # now and then: on a GPU, reading a result waits for it
            loss, q_value = loss.item(), q_values.mean().item()
            if not np.isfinite(loss):
                raise FloatingPointError(f"the TD loss is {loss} at step {step:,}")
            self.writer.add_scalar("losses/td_loss", loss, step)
            self.writer.add_scalar("losses/q_values", q_value, step)

    def after_step(self, step, steps_before, epsilon):
        every = self.args.checkpoint_frequency
        if every and step // every > steps_before // every and step < self.args.total_timesteps:
            self.save(step)  # (the end saves anyway)
        if time.time() - self.printed_at >= 10:
            sps = (step - self.printed_step) / (time.time() - self.printed_at)
            self.writer.add_scalar("charts/SPS", sps, step)
            self.writer.add_scalar("charts/epsilon", epsilon, step)
            eta = datetime.timedelta(seconds=int((self.args.total_timesteps - step) / sps))
            left = f"{eta} left" if self.printed_step >= self.learning_starts else "time left: once learning runs"
            mean = f"{np.mean(self.recent_returns):.1f}" if self.recent_returns else "-"
            print(f"step {step:,}/{self.args.total_timesteps:,}  {sps:,.0f} steps/s  epsilon {epsilon:.3f}  "
                  f"return {mean} ({len(self.recent_returns)} games)  {left}")
            self.printed_at, self.printed_step = time.time(), step

    def save(self, step, stop=None):
        """Writes the checkpoint (dropping an older saved memory) and says so; at a stop before the end, the memory."""
        q_network, target_network, optimizer = self.learner
        if not all(weights.isfinite().all() for weights in q_network.state_dict().values()):
            raise FloatingPointError(f"the Q-network's weights are not finite at step {step:,}")
        checkpoint = {
            "model": q_network.state_dict(), "target_model": target_network.state_dict(),
            "optimizer": optimizer.state_dict(), "rng": [rng.bit_generator.state for rng in self.rngs],
            "global_step": step, "args": asdict(self.args), "recent_returns": list(self.recent_returns),
            "evaluated": False, "run_id": self.run_id,  # main's final evaluation sets it
        }
        save_checkpoint(self.path, checkpoint)
        for stale in (self.memory_path, self.memory_path + ".tmp"):  # saved with an earlier checkpoint, or half
            with contextlib.suppress(FileNotFoundError):
                os.remove(stale)
        self.writer.flush()
        stopped_by = "" if stop is None else "SIGTERM, " if isinstance(stop, Terminated) else "Ctrl-C, "
        print(f"{stopped_by}step {step:,}: checkpoint saved to {self.path}")
        if stop is not None and step < self.args.total_timesteps:  # (a finished run needs none)
            self.save_memory(step)

    def save_memory(self, step):
        """.npy records: the run and step it belongs to, then the buffer's arrays, written from the arrays themselves
        (no copy in RAM), read back with no pickle."""
        arrays = [np.array([self.run_id, step]), *self.memory]
        size = sum(array.nbytes for array in arrays)

        def write(file):
            for array in arrays:
                np.lib.format.write_array(file, array, allow_pickle=False)

        try:
            print(f"saving the replay memory ({size / 1e9:.2f} GB) to {self.memory_path}; a resume goes on with it")
            write_atomically(self.memory_path, write)
        except OSError as error:
            print(f"the replay memory ({size / 1e9:.2f} GB) is not saved ({error}): a resume refills it")

    def load_memory(self, rb):
        """Reads the replay memory saved with the checkpoint into the buffer's own arrays; None, or why not."""
        arrays = [np.zeros(2, np.int64), *self.memory]
        try:
            with open(self.memory_path, "rb") as file:
                for array in arrays:
                    if np.lib.format.read_magic(file) != (1, 0):
                        raise ValueError("it is not a replay memory of this script")
                    if np.lib.format.read_array_header_1_0(file) != (array.shape, False, array.dtype):
                        raise ValueError("it is of another --buffer-size or --num-envs, or not of this script")
                    if file.readinto(array) != array.nbytes:
                        raise ValueError("it is truncated")
                    if array is arrays[0] and array.tolist() != [self.run_id, self.start_step]:
                        raise ValueError("it was saved by another run or at another step")
            return None
        except FileNotFoundError:
            if os.path.exists(self.memory_path + ".tmp"):
                return "its write at the stop was cut off"
            return "none was saved with this checkpoint: only a stop saves it (Ctrl-C, SIGTERM)"
        except (OSError, ValueError) as error:
            rb.valid.fill(False)  # what was read is dropped: the buffer is empty again
            rb.written.fill(0)
            return f"{self.memory_path}: {error}"


def write_atomically(path, write):
    """write(file) to path.tmp, renamed over path once on the disk: a kill at any instant leaves the last whole file."""
    temporary = path + ".tmp"
    try:
        with open(temporary, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)  # atomic
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)


def save_checkpoint(path, checkpoint):
    """torch.save, atomically. Serialized in memory first: torch's zip writer, writing to the file, answers a disk
    that fills mid-file with a RuntimeError of its own, not the OSError that main reports in one line."""
    data = io.BytesIO()
    torch.save(checkpoint, data)
    write_atomically(path, lambda file: file.write(data.getbuffer()))


def load_checkpoint(path):
    """A checkpoint that train saved (tensors and plain values) and its Q-network, or a ValueError."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if {"model", "args", "global_step"} - set(checkpoint):
            raise KeyError("model, args or global_step")
        q_network = QNetwork(list(checkpoint["model"].values())[-1].shape[0])  # the output bias is last
        q_network.load_state_dict(checkpoint["model"])
    except Exception as error:  # whatever the file holds, the user needs one line, not a traceback
        raise ValueError(f"cannot read a checkpoint of this script from {path} ({type(error).__name__})") from None
    return checkpoint, q_network


def saved_args(args, argv):
    """--resume's or --eval-checkpoint's args with argv's flags over them, its checkpoint and Q-network (or Nones)."""
    if args.resume and args.eval_checkpoint:
        raise ValueError("give --resume or --eval-checkpoint, not both")
    auto = args.resume == "auto"
    if auto and not args.run_name:
        raise ValueError("--resume auto needs --run-name: the name a restart finds the run by")
    path = os.path.join(args.run_dir, args.run_name) if auto else args.resume or args.eval_checkpoint
    path = os.path.join(path, "checkpoint.pt") if auto or os.path.isdir(path) else path  # a run's folder
    if not path or auto and not os.path.exists(path):  # neither flag, or a first start
        return args, None, None
    checkpoint, q_network = load_checkpoint(path)
    if args.resume and {"target_model", "optimizer", "rng", "recent_returns"} - set(checkpoint):
        raise ValueError(f"{path} holds an agent to evaluate, not a run to go on with")
    flags = {field.name for field in fields(Args)}
    run_dir, run_name = os.path.split(os.path.dirname(path) or ".")  # by default, the checkpoint's folder
    kept = {name: value for name, value in checkpoint["args"].items() if name in flags}  # flags of today
    saved = Args(**{**kept, "run_dir": run_dir, "run_name": run_name, "resume": args.resume,
                    "eval_checkpoint": args.eval_checkpoint})
    resumed = tyro.cli(Args, args=argv, default=saved)  # the command line over the saved args
    if resumed.exploration_fraction == saved.exploration_fraction:  # epsilon keeps its steps
        exploration_steps = saved.exploration_fraction * saved.total_timesteps
        resumed.exploration_fraction = min(1.0, exploration_steps / resumed.total_timesteps)
    num_actions = make_env(resumed.env_id, 1).single_action_space.n
    if num_actions != q_network.network[-1].out_features:
        raise ValueError(f"--env-id {resumed.env_id} has {num_actions} actions, the checkpoint's Q-network "
                         f"{q_network.network[-1].out_features}")
    changed = [f"--{name.replace('_', '-')} {getattr(resumed, name)} (saved: {getattr(saved, name)})"
               for name in sorted(flags) if getattr(resumed, name) != getattr(saved, name)]
    if changed:
        print(f"changed from the saved run: {', '.join(changed)}")
    return resumed, checkpoint, q_network


class Terminated(KeyboardInterrupt):
    """SIGTERM (a time limit, preemption, docker stop) in the loop: stop as on Ctrl-C. Elsewhere the process ends."""


@contextlib.contextmanager
def stops_between_steps():
    """Ctrl-C and SIGTERM noted in the list it gives, for the loop to end between whole steps (no half step saved)."""
    stops = []
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum, handler in previous.items():
        if handler != signal.SIG_IGN:  # a background job's Ctrl-C stays ignored
            signal.signal(signum, lambda signum, frame: stops.append(
                Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()))
    try:
        yield stops
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def check_args(args):
    """A ValueError naming (as typed) the first flag that would make a wrong or a failing run."""
    make_env(args.env_id, 1)  # an id that is not Atari's: one line
    positive = ["total_timesteps", "num_envs", "batch_size", "learning_rate", "train_frequency",
                "target_network_frequency"]
    checks = [(getattr(args, name) > 0, f"--{name.replace('_', '-')} must be positive") for name in positive]
    checks += [
        (args.seed >= 0, "--seed must be >= 0"),
        (args.buffer_size >= 5 * args.num_envs, "--buffer-size must hold at least 5 transitions per env"),
        (0 <= args.learning_starts < args.total_timesteps, "--learning-starts must be in [0, --total-timesteps)"),
        (0 <= args.gamma <= 1, "--gamma must be in [0, 1]"),
        (0 < args.tau <= 1, "--tau must be in (0, 1]"),
        (0 < args.exploration_fraction <= 1, "--exploration-fraction must be in (0, 1]"),
        (0 <= args.end_e <= args.start_e <= 1, "need 0 <= --end-e <= --start-e <= 1"),
        (0 <= args.eval_epsilon <= 1, "--eval-epsilon must be in [0, 1]"),
        (args.eval_episodes >= 0, "--eval-episodes must be >= 0"),
        (args.eval_episodes > 0 or not args.eval_checkpoint, "--eval-checkpoint needs --eval-episodes >= 1"),
        (args.checkpoint_frequency >= 0, "--checkpoint-frequency must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    if not args.eval_checkpoint:  # the runs' folder, made now rather than after the replay memory
        try:
            os.makedirs(args.run_dir or ".", exist_ok=True)
        except OSError as error:
            raise ValueError(f"--run-dir {args.run_dir}: cannot make that folder ({error.strerror})") from None


def main():
    args = tyro.cli(Args, description=__doc__.split("\n\n")[0])
    sys.stdout.reconfigure(line_buffering=True)  # each line reaches a log file at once
    program = os.path.basename(sys.argv[0])
    try:
        args, checkpoint, q_network = saved_args(args, sys.argv[1:])  # of --resume and --eval-checkpoint
        check_args(args)
    except ValueError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        sys.exit(2)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    if args.cuda and device.type == "cpu":
        print("no GPU found: running on the CPU")
    memory = f"{args.buffer_size * 7070 / 1e9:.2f} GB"  # 7,070 bytes a transition: a frame, its action and flags
    try:
        if not args.eval_checkpoint and (checkpoint is None or checkpoint["global_step"] < args.total_timesteps):
            print(f"taking {memory} of replay memory ({args.buffer_size:,} transitions)")
            q_network = train(args, checkpoint=checkpoint)[0]  # (the replay memory is freed)
            if not args.eval_episodes:
                return
            path = os.path.join(args.run_dir, args.run_name, "checkpoint.pt")  # (train names a new run)
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # the end's, to mark evaluated
        # A finished run plays its final evaluation once; checkpoints from before "evaluated" were saved after theirs.
        elif not args.eval_checkpoint and (checkpoint.get("evaluated", True) or not args.eval_episodes):
            print(f"the run is done at its {args.total_timesteps:,} steps (a larger --total-timesteps extends it)")
            return
        # The games that --eval-checkpoint of the run's checkpoint plays: the same scores.
        torch.backends.cudnn.deterministic = args.torch_deterministic  # as train sets it, and the layout too
        q_network.to(device, memory_format=torch.channels_last if args.fast else torch.contiguous_format)
        scores = evaluate(q_network, args.env_id, args.eval_episodes, args.eval_epsilon, device,
                          args.seed + args.num_envs)
        if not args.eval_checkpoint:  # the run's own: logged, and the run is done
            folder = os.path.join(args.run_dir, args.run_name)
            with SummaryWriter(folder) as writer:
                for i, score in enumerate(scores):
                    writer.add_scalar("eval/episodic_return", score, i)
            save_checkpoint(os.path.join(folder, "checkpoint.pt"), {**checkpoint, "evaluated": True})
    except KeyboardInterrupt as stop:  # the checkpoint and the logs were saved on the way out
        sys.exit(143 if isinstance(stop, Terminated) else 130)  # 128 + the signal, as shells say
    except (FloatingPointError, OSError) as error:  # a NaN; a full disk (any other OSError is a bug to trace)
        if isinstance(error, OSError) and error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"{program}: error: {error}; any checkpoint on disk is the last good one", file=sys.stderr)
        sys.exit(1)
    except MemoryError:  # most likely as the run starts, where the replay memory takes all of its memory
        print(f"{program}: error: out of memory (--buffer-size {args.buffer_size:,} takes {memory})", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
