"""The tests' tiny training config as a config file, for the command line:

    python -m deim_jax.main --config=tests/tiny_config.py:DATA_ROOT[,EPOCHS] --workdir=DIR

The data set is generated into DATA_ROOT (``tests.train_helpers.tiny_dataset``) if it is not there.
"""

from tests.train_helpers import tiny_config, tiny_dataset


def get_config(arg: str):
    root, _, epochs = arg.partition(",")
    return tiny_config(tiny_dataset(root), epochs=int(epochs or 1))
