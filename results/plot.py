"""A run's learning curve from its TensorBoard events, every resumed segment of it: a CSV and a PNG.

    python results/plot.py RUN_FOLDER [--out results/pong] [--target 18]   ->   results/pong.csv, results/pong.png

The CSV has a row per game played in training (kind "train") and per game of the final evaluation (kind
"eval"), each with the agent step, the training hours at that step and the score. Training hours add up the
time between a process's consecutive training events; a process logs at least every ~10 s, so a silence of
over PAUSE seconds (a pause, a machine asleep) and the gaps between processes do not count. The work of a
stopped process after its last checkpoint is redone by the next one: its time counts, its points are
replaced, as TensorBoard replaces them (purge_step). The PNG marks each resume with a thin vertical line (red,
dotted where the resume refilled its replay memory), and --target's score with a dashed one. matplotlib is needed here only.

A run whose machine was lost goes on from a checkpoint kept elsewhere, in a new folder: --earlier takes its games
before that checkpoint's step from the CSV that this script made of it before the loss (its earlier resumes are
not in a CSV, so not marked). The hours go on from those of the CSV's last game before the step.
"""

import argparse
import csv
import glob
import os

import numpy as np
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.util.tensor_util import make_ndarray

TRAIN, EVAL, REFILLED = "charts/episodic_return", "eval/episodic_return", "charts/memory_refilled"
PAUSE = 120  # seconds without a training event: the process was not running


def read_run(run_dir):
    """The run's training games and evaluation games as lists of (step, hours, score), the last step it
    logged in training, its training hours (the evaluation after training left out), and the (step, hours,
    refilled) where a new process took the run on from a checkpoint: refilled is True where it had to refill
    its replay memory, False where it went on with it, None where the process did not say (older versions)."""
    paths = sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*")))  # named by their start time
    if not paths:
        raise SystemExit(f"plot.py: error: no TensorBoard event files in {run_dir}")
    points = {TRAIN: [], EVAL: []}
    resumes = []
    hours = 0.0  # training time so far, over all the processes
    final_step = 0
    for path in paths:
        last = None  # the wall time of this process's last training event
        for event in EventFileLoader(path).Load():
            if all(value.tag != EVAL for value in event.summary.value):  # training, not the evaluation
                if last is not None and 0 <= event.wall_time - last <= PAUSE:
                    hours += (event.wall_time - last) / 3600
                last = event.wall_time
                final_step = max(final_step, event.step)
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                # A resumed process replaces the games logged from its first step on, and any evaluation before it
                # (that of a finished run that it extends): the run's final evaluation is the last process's.
                points[TRAIN] = [p for p in points[TRAIN] if p[0] < event.step]
                points[EVAL] = []
                final_step = event.step - 1  # the step it resumed from
                resumes = [r for r in resumes if r[0] < final_step]  # a restart from an earlier checkpoint
                resumes.append((final_step, hours, None))  # redoes the resumes after it
            for value in event.summary.value:
                if value.tag in points:
                    points[value.tag].append((event.step, hours, float(make_ndarray(value.tensor))))
                if value.tag == REFILLED and resumes and resumes[-1][0] == event.step:  # logged as it resumes
                    resumes[-1] = (*resumes[-1][:2], bool(make_ndarray(value.tensor)))
    return points[TRAIN], points[EVAL], final_step, hours, resumes


def earlier_games(path, train, resumes):
    """The training games of an earlier CSV of the run up to the step from which its first event file resumes."""
    if not resumes or (train and train[0][0] <= resumes[0][0]):  # the folder must begin with that resume
        raise SystemExit("plot.py: error: --earlier needs a run folder that begins with a resume from a checkpoint")
    with open(path, newline="") as file:
        rows = [(int(row["step"]), float(row["hours"]), float(row["score"])) for row in csv.DictReader(file)
                if row["kind"] == "train" and int(row["step"]) <= resumes[0][0]]
    if not rows:
        raise SystemExit(f"plot.py: error: {path} holds no training game up to step {resumes[0][0]:,}")
    return rows


def running_mean(scores, window=20):
    """The mean of the last `window` games (fewer at the start): the progress line's "return"."""
    sums = np.cumsum(np.insert(np.asarray(scores, float), 0, 0.0))
    counts = np.minimum(np.arange(1, len(scores) + 1), window)
    return (sums[1:] - sums[np.arange(1, len(scores) + 1) - counts]) / counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="the run's folder, e.g. runs/<run_name>")
    parser.add_argument("--out", default="results/curve", help="path of the CSV and PNG, without suffix")
    parser.add_argument("--title", default="", help="the figure's title (default: the folder's name)")
    parser.add_argument("--target", type=float, help="a score to mark with a dashed line, e.g. 18 for Pong")
    parser.add_argument("--earlier", help="a CSV of this run's games before its event files (a lost machine)")
    args = parser.parse_args()
    train, evaluation, final_step, final_hours, resumes = read_run(args.run_dir)
    if args.earlier:  # the lost folder's games first, and its hours before all of the new folder's
        earlier = earlier_games(args.earlier, train, resumes)
        offset = earlier[-1][1]
        train = earlier + [(step, hours + offset, score) for step, hours, score in train]
        resumes = [(step, hours + offset, refilled) for step, hours, refilled in resumes]
        final_hours += offset
    if not train:
        raise SystemExit(f"plot.py: error: {args.run_dir} holds no finished game yet")
    evaluation = [(final_step, final_hours, score) for _, _, score in evaluation]  # logged at 0, 1, ...
    with open(args.out + ".csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["kind", "step", "hours", "score"])
        for kind, rows in (("train", train), ("eval", evaluation)):
            writer.writerows([kind, step, f"{hours:.4f}", score] for step, hours, score in rows)

    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    steps, hours, scores = (np.array(column) for column in zip(*train))
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, x, label in ((axes[0], steps / 1e6, "agent steps (millions)"), (axes[1], hours, "training hours")):
        ax.plot(x, scores, ".", color="tab:blue", alpha=0.25, markersize=3, label="a training game")
        ax.plot(x, running_mean(scores), color="tab:blue", label="mean of the last 20 games")
        if evaluation:
            eval_scores = [score for _, _, score in evaluation]
            end = final_step / 1e6 if ax is axes[0] else final_hours
            ax.errorbar(end, np.mean(eval_scores), yerr=np.std(eval_scores), fmt="o", color="tab:red",
                        capsize=4, label=f"final evaluation ({len(eval_scores)} games, mean +- std)")
        if args.target is not None:
            ax.axhline(args.target, color="tab:green", linestyle="--", linewidth=1, label=f"target {args.target:g}")
        labels = set()
        for step, resume_hours, refilled in resumes:  # thin, behind the points: where a new process went on
            label = "resumed, replay memory refilled" if refilled else "resumed"
            ax.axvline(step / 1e6 if ax is axes[0] else resume_hours, color="tab:red" if refilled else "gray",
                       linestyle=":" if refilled else "-", linewidth=0.8, zorder=1,
                       label=None if label in labels else label)
            labels.add(label)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score (episodic return)")
    axes[0].legend(loc="lower right", fontsize=8)  # scores rise: the lower right stays empty
    figure.suptitle(args.title or os.path.basename(os.path.normpath(args.run_dir)))
    figure.tight_layout()
    figure.savefig(args.out + ".png", dpi=100)
    print(f"{len(train)} training games{f' ({len(earlier)} from {args.earlier})' if args.earlier else ''}, "
          f"{len(evaluation)} evaluation games, {final_step:,} steps, "
          f"{final_hours:.2f} training hours, {len(resumes)} resumes ({sum(r[2] is True for r in resumes)} refilled)"
          f" -> {args.out}.csv, {args.out}.png")


if __name__ == "__main__":
    main()
