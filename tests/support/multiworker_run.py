"""Helper for test_distribute.py: one worker of a two-process
``tf.distribute.MultiWorkerMirroredStrategy`` run (not collected by pytest).

Sets ``TF_CONFIG`` for worker INDEX of the cluster ``localhost:PORT`` for each
PORT, creates the strategy before any other TensorFlow op (as TensorFlow
requires), then trains distribute_run.py's model, data and BitBudget with
``distribute_run.train``: the same seed, initial weights and global batch as
its single-device run. Each worker trains on its half of every global batch
(tf.data auto-sharding) and prints one JSON line with its results.

Usage: python multiworker_run.py INDEX PORT [PORT ...] [--steps N] [--batch GLOBAL_BATCH]
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("index", type=int)
    parser.add_argument("ports", nargs="+")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    args = parser.parse_args()
    os.environ["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": [f"localhost:{port}" for port in args.ports]},
        "task": {"type": "worker", "index": args.index},
    })

    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    tf.config.experimental.enable_op_determinism()

    from tests.support import distribute_run

    steps = args.steps or distribute_run.STEPS
    batch = args.batch or distribute_run.BATCH
    x, y = distribute_run.data(steps, batch)
    result = distribute_run.train(distribute_run.initial_weights(), x, y, batch, strategy)
    result.update(worker=args.index, replicas=strategy.num_replicas_in_sync,
                  workers=strategy.cluster_resolver.cluster_spec().num_tasks("worker"))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
