#!/usr/bin/env python3
"""What a linear probe could read if the features were the simulator's exact state.

simclr-eval's physics probes (src/eval/targets.rs) are linear read-outs of frozen features. This
tool asks the same questions of features that *are* the answer's ingredients: the exact ball
positions (and velocities) at the frames the encoder sees, from a bouncing-ball dataset's
labels.jsonl. Where even these read a probe poorly, no encoder read linearly can do much better
unless its features are nonlinear in the state; the quadratic set (the state plus all pairwise
products) shows what such features could add.

Same protocol as simclr-eval where it matters: the frames seen are evenly spaced
(k * stored // n), the targets are defined as in targets.rs (centroids at the first, middle and
last seen frame; speed = mean |v| over the balls at the seen frames; velocity at the middle seen
frame; collision / wall bounce between the first and last seen frame; the future centroid at the
clip's last frame), 70/30 random splits, mean and sd over them. The read-out is ridge regression
(classes: one ridge per class, argmax; binary: its score ranked for ROC AUC), its strength chosen
on a fifth of the train part: close to, not the same as, simclr-eval's logistic probes.
Needs PyTorch for the linear algebra (the venv of tools/install_torch.sh).

  ~/.cache/simclr/torch-venv/bin/python tools/probe_ceiling.py --data DIR [--frames 4] [--splits 3]
"""
import argparse
import json
import math
import statistics

import torch


def evenly_spaced(total, n):
    return [k * total // n for k in range(n)]


def centroid(frame_positions):
    xs = [p[0] for p in frame_positions]
    ys = [p[1] for p in frame_positions]
    return [sum(xs) / len(xs), sum(ys) / len(ys)]


def targets(label, seen, future):
    first, middle, last = seen[0], seen[len(seen) // 2], seen[-1]
    pos, vel = label["positions"], label["velocities"]
    events = label["collisions"]
    inside = lambda kind: any(e["kind"] == kind and first < e["frame"] <= last for e in events)  # noqa: E731
    speeds = [math.hypot(*v) for f in seen for v in vel[f]]
    return {
        "ball count": label["ball_count"],
        "centroid": centroid(pos[first]) + centroid(pos[middle]) + centroid(pos[last]),
        "speed": [sum(speeds) / len(speeds)],
        "velocity": centroid(vel[middle]),
        "gravity": int(label["gravity"] > 0),
        "elastic": int(label["restitution"] >= 1 - 1e-9),
        "collision": int(inside("ball")),
        "wall bounce": int(inside("wall")),
        "future centroid": centroid(pos[future]),
    }


def state(label, seen, slots, with_velocities):
    """Per seen frame and ball slot: x, y, present (and vx, vy); absent balls are zeros."""
    out = []
    for f in seen:
        for b in range(slots):
            here = b < label["ball_count"]
            out += [*label["positions"][f][b], 1.0] if here else [0.0, 0.0, 0.0]
            if with_velocities:
                out += label["velocities"][f][b] if here else [0.0, 0.0]
    return out


def with_products(x):
    rows, cols = torch.triu_indices(x.shape[1], x.shape[1])
    return torch.cat([x, (x[:, :, None] * x[:, None, :])[:, rows, cols]], 1)


def ridge(x, y, strength):
    x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    eye = torch.eye(x.shape[1], dtype=x.dtype)
    eye[-1, -1] = 0  # the intercept is not shrunk
    return torch.linalg.solve(x.T @ x + strength * len(x) * eye, x.T @ y)


def predict(w, x):
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1) @ w


def auc(score, label):
    pos, neg = score[label == 1], score[label == 0]
    greater = (pos[:, None] > neg[None, :]).double().mean()
    ties = (pos[:, None] == neg[None, :]).double().mean()
    return (greater + 0.5 * ties).item()


def r2(pred, y):
    return (1 - ((pred - y) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)).mean().item()


def score(kind, pred, y):
    if kind == "classes":
        return (pred.argmax(1) == y.argmax(1)).double().mean().item()
    if kind == "binary":
        return auc(pred[:, 0], y[:, 0])
    return r2(pred, y)


def probe(x, y, kind, train, test, generator):
    """Fits on `train` (its strength chosen on a fifth of it), scores on `test`."""
    order = train[torch.randperm(len(train), generator=generator)]
    fit, val = order[len(order) // 5:], order[: len(order) // 5]
    best = max(
        (score(kind, predict(ridge(x[fit], y[fit], s), x[val]), y[val]), s) for s in [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    )[1]
    return score(kind, predict(ridge(x[train], y[train], best), x[test]), y[test])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a bouncing-ball dataset (simclr-data bouncing), with labels.jsonl")
    ap.add_argument("--frames", type=int, default=4, help="frames the encoder sees [4, the demo's]")
    ap.add_argument("--splits", type=int, default=3)
    args = ap.parse_args()
    labels = [json.loads(line) for line in open(f"{args.data}/labels.jsonl")]
    stored = len(labels[0]["positions"])
    seen = evenly_spaced(stored, args.frames)
    future = stored - 1
    slots = max(label["ball_count"] for label in labels)
    answers = [targets(label, seen, future) for label in labels]
    counts = sorted({a["ball count"] for a in answers})

    def target_matrix(name):
        if name == "ball count":
            return "classes", torch.tensor([[float(a[name] == c) for c in counts] for a in answers], dtype=torch.float64)
        if isinstance(answers[0][name], int):
            return "binary", torch.tensor([[float(a[name])] for a in answers], dtype=torch.float64)
        return "values", torch.tensor([a[name] for a in answers], dtype=torch.float64)

    positions = torch.tensor([state(label, seen, slots, False) for label in labels], dtype=torch.float64)
    both = torch.tensor([state(label, seen, slots, True) for label in labels], dtype=torch.float64)
    feature_sets = {
        "positions": positions,
        "positions+velocities": both,
        "positions, quadratic": with_products(positions),
    }
    names = list(answers[0])
    print(f"# {args.data}: {len(labels)} clips of {stored} frames; seen {seen}, future frame {future}; "
          f"{args.splits} random 70/30 splits, mean ± sd")
    print(f"{'probe':<18} {'metric':<9}" + "".join(f"{k:>24}" for k in feature_sets))
    for name in names:
        kind, y = target_matrix(name)
        row = f"{name:<18} {({'classes': 'accuracy', 'binary': 'ROC AUC'}.get(kind, 'R²')):<9}"
        for x in feature_sets.values():
            runs = []
            for split in range(args.splits):
                generator = torch.Generator().manual_seed(split)
                perm = torch.randperm(len(labels), generator=generator)
                cut = int(0.7 * len(labels))
                runs.append(probe(x, y, kind, perm[:cut], perm[cut:], generator))
            row += f"{statistics.mean(runs):>17.3f} ± {statistics.stdev(runs) if len(runs) > 1 else 0:.3f}"
        print(row)


if __name__ == "__main__":
    main()
