"""A film of a trained agent: an animated GIF of the game in colour at 210x160, as a person sees it.

    python results/record.py results/pong.pt --out results/pong.gif [--seconds 30] [--seed 1] [--epsilon 0.05]

The agent plays on dqn_atari's 84x84 gray env; a second env with the same game settings and seed, but full-size
colour frames, takes the same actions and stays in lockstep with it (checked at every step: same rewards, same
ends). The agent plays as evaluated, with epsilon 0.05: the film shows the policy whose scores are reported
(epsilon 0 can also lock a deterministic agent into a loop that the evaluation would break). FIRE follows a lost
life, as in evaluate. The clip starts at the reset, so it shows a game from its first serve, and ends after
--seconds of play or at the game's end. Each agent step (4 frames, 1/15 s) is one GIF frame shown for 70 ms:
GIF stores hundredths of a second, and 70 is the nearest to 66.7 (the film runs 5% slow); Pillow, the only
package used, stores a repeated frame once, shown for longer.
"""

import argparse
import os
import sys

import numpy as np
import torch
from ale_py.vector_env import AtariVectorEnv
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import dqn_atari  # noqa: E402  (the script sits one folder below it)

FRAME_MS = 70  # per agent step of 4/60 s
STEPS_PER_SECOND = 15  # 60 frames a second, 4 a step


def colour_env(env_id):
    """make_env's game settings, with the game's own frames: (1, 1, 210, 160, 3) RGB."""
    game = dqn_atari.gym.registry[env_id].kwargs  # make_env has checked the id
    return AtariVectorEnv(
        game=game["game"], num_envs=1, repeat_action_probability=game["repeat_action_probability"],
        full_action_space=game["full_action_space"], max_num_frames_per_episode=game["max_num_frames_per_episode"],
        noop_max=30, use_fire_reset=True, frameskip=4, reward_clipping=False, episodic_life=False,
        # The last frame, as the screen showed it: a max over two, channel by channel, paints a moving sprite's
        # edge in a colour the game never shows (Pong's green paddle on the brown court: olive).
        maxpool=False, img_height=210, img_width=160, grayscale=False, stack_num=1, num_threads=1)


def record(q_network, env_id, steps, seed, epsilon):
    """The colour frames of up to `steps` agent steps (fewer if the game ends) and the score over them."""
    envs, film = dqn_atari.make_env(env_id, 1), colour_env(env_id)
    fire, rng = dqn_atari.fire_action(envs), np.random.default_rng(seed)
    obs, infos = envs.reset(seed=seed)
    film.reset(seed=seed)  # the same seed: the same no-op start and sticky actions
    frames, score, serve = [], 0.0, False
    for _ in range(steps):
        with torch.no_grad():
            action = q_network(torch.from_numpy(obs)).argmax(dim=1).numpy()
        if rng.random() < epsilon:
            action[0] = rng.integers(envs.single_action_space.n)
        if serve:  # the game waits for FIRE after a lost life
            action[0] = fire
        lives = infos["lives"][0]
        obs, reward, terminated, truncated, infos = envs.step(action)
        frame, film_reward, film_terminated, film_truncated, _ = film.step(action)
        if (reward[0], terminated[0], truncated[0]) != (film_reward[0], film_terminated[0], film_truncated[0]):
            fail(f"the colour env left lockstep with the agent's env at step {len(frames) + 1}")
        frames.append(frame[0, -1])
        score += float(reward[0])
        serve = fire is not None and infos["lives"][0] < lives
        if terminated[0] or truncated[0]:
            break
    return frames, score


def fail(message):
    """One line on stderr and exit 2, as argparse does for a bad argument (without the usage)."""
    print(f"record.py: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a checkpoint that dqn_atari.py saved")
    parser.add_argument("--out", default="results/agent.gif", help="the GIF to write")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of play to film (1 to 120)")
    parser.add_argument("--seed", type=int, default=1, help="the game's seed (its random no-op start)")
    parser.add_argument("--epsilon", type=float, default=0.05, help="chance of a random action, as in evaluation")
    parser.error = fail  # argparse's own errors too: one line
    args = parser.parse_args()
    if not 1 <= args.seconds <= 120:  # a film, not a game (Pong: ~65 KB per 30 s)
        fail(f"--seconds must be between 1 and 120, not {args.seconds}")
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):  # before the play, not after
        fail(f"no folder for {args.out}")
    try:
        checkpoint, q_network = dqn_atari.load_checkpoint(args.checkpoint)
    except ValueError as error:
        fail(error)
    env_id = checkpoint["args"]["env_id"]
    torch.set_num_threads(1)  # one small forward a step: on a busy 2-core machine, 2 threads ran it 90x slower
    frames, score = record(q_network, env_id, round(args.seconds * STEPS_PER_SECOND), args.seed, args.epsilon)
    images = [Image.fromarray(frame) for frame in frames]  # RGB: Pillow gives each frame an exact palette (<=256)
    images[0].save(args.out, save_all=True, append_images=images[1:], duration=FRAME_MS, loop=0)
    print(f"{len(images)} frames, {len(images) * FRAME_MS / 1000:.1f} s, {os.path.getsize(args.out):,} bytes, "
          f"score {score:+g} during the clip ({env_id}) -> {args.out}")


if __name__ == "__main__":
    main()
