"""Does a Q-network still see the screen? For each ReLU layer, the share of its filters (conv) or units (dense) that
fire on at least one of 4,096 game states, and how much the Q-values differ from state to state.

    python results/activity.py results/pong.pt runs/<run>/checkpoint.pt

A filter that fires on no state passes no gradient to the weights that feed it, so it stays silent: once most are,
the Q-values are about the same in every state and the agent plays as if blind (the dead-ReLU collapse). The
states come from each checkpoint's own game, played at random (8 envs, every 4th step, seed 0, no game's first
stacks): the figures need neither the run's replay memory nor its machine.
"""

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import dqn_atari  # noqa: E402  (the script sits one folder below it)


def game_states(env_id, count=4096, num_envs=8, every=4, seed=0):
    """`count` stacks of 4 frames from random play, uint8 as the Q-network takes them. A game's first stacks are
    left out: their zero-padding frames can make a filter fire that no frame of the game does."""
    envs = dqn_atari.make_env(env_id, num_envs)
    rng = np.random.default_rng(seed)
    obs, _ = envs.reset(seed=seed)
    states, step = [], 0
    while sum(map(len, states)) < count:
        if step % every == 0:
            states.append(obs[(obs.reshape(num_envs, 4, -1).max(axis=2) > 0).all(axis=1)])  # no zero frame
        obs, *_ = envs.step(rng.integers(envs.single_action_space.n, size=num_envs))
        step += 1
    envs.close()
    return torch.from_numpy(np.concatenate(states)[:count])


@torch.no_grad()
def activity(q_network, states):
    """The share of each ReLU layer's filters or units that fire on some state; the Q-values' spread over states
    (their standard deviation across the states, averaged over the actions)."""
    x = states.float() / 255.0  # as QNetwork.forward scales them
    firing = []
    for layer in q_network.network:
        x = layer(x)
        if isinstance(layer, torch.nn.ReLU):
            fired = x > 0 if x.dim() == 2 else (x > 0).flatten(2).any(dim=2)  # a filter: anywhere in the frame
            firing.append(fired.any(dim=0).float().mean().item())
    return firing, x.std(dim=0).mean().item()


def fail(message):
    """One line on stderr and exit 2, as record.py does (argparse's own errors too)."""
    print(f"activity.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoints that dqn_atari.py saved")
    parser.error = fail
    args = parser.parse_args()
    states = {}
    for path in args.checkpoints:
        try:
            checkpoint, q_network = dqn_atari.load_checkpoint(path)
        except ValueError as error:
            fail(error)
        env_id = checkpoint["args"]["env_id"]
        if env_id not in states:
            states[env_id] = game_states(env_id)
        firing, spread = activity(q_network, states[env_id])
        shares = ", ".join(f"{share:.1%}" for share in firing)
        print(f"{path} (step {checkpoint['global_step']:,}): firing {shares} (conv1, conv2, conv3, dense); "
              f"Q-values' spread over states {spread:.4f}")


if __name__ == "__main__":
    main()
