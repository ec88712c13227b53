"""Prints the learning-curve numbers docs/results.md quotes, from a report's report.json.

    python docs/results/curve_numbers.py [docs/results/cpu_resnet20_15ep/report/report.json]

One line per (level, variant): test accuracy (%) after epochs 1-4, 7, 8 and the last, and the
gain from epoch 8 to the last. Epochs are global (epoch e ends at step e x steps per epoch), so
runs that start at the rewind point (weight_rewind, kd_rewind: step 955, inside epoch 3) have no
value before epoch 3.
"""

import json
import sys


def main(path: str) -> None:
    report = json.load(open(path))
    for group in report["groups"]:
        print(f"# {group['model']} on {group['dataset']}")
        for curve in group["learning_curves"]:
            accuracy = dict(zip(curve["epochs"], curve["test_accuracy_mean"]))
            last = max(accuracy)

            def at(epoch: float) -> str:
                return f"{100 * accuracy[epoch]:.2f}" if epoch in accuracy else "-"

            early = " ".join(at(float(e)) for e in (1, 2, 3, 4))
            gain = (f"{100 * (accuracy[last] - accuracy[8.0]):+.2f}" if 8.0 in accuracy
                    else "-")
            print(f"L{curve['level']} {curve['variant']:<14} n={curve['n']}  epochs 1-4: {early}"
                  f"  epoch 7: {at(7.0)}  epoch 8: {at(8.0)}  epoch {last:g}: {at(last)}"
                  f"  gain 8->{last:g}: {gain}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else
         "docs/results/cpu_resnet20_15ep/report/report.json")
