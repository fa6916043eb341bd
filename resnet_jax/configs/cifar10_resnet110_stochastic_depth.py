"""CIFAR-10 ResNet-110 with stochastic depth (Huang et al. 2016, Table 1: 5.25 %; constant depth 6.41 %).

The paper's recipe (§4, and the authors' Torch code, yueatsprograms/Stochastic_Depth `main.lua`):
the linear decay rule with p_L = 0.5 (`drop_path_rate=0.5`, `drop_path_rule="linear"`), 500
epochs of batch 128, lr 0.1 ÷10 at epochs 250 and 375, Nesterov momentum 0.9, weight decay 1e-4,
no warm-up, per-channel normalisation, 4-pixel translations and flips, BatchNorm over the whole
batch (one GPU). Trained on 45,000 images; the paper reports the test error of the epoch with the
lowest error on the other 5,000 (`data.eval_split`): the kept-best checkpoint, evaluated with
`resnet-jax eval --step best --split test`.
"""
from typing import Optional

import ml_collections

from resnet_jax.configs import base


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  c = base.cifar_epochs_config("cifar_resnet110", {"drop_path_rate": 0.5, "drop_path_rule": "linear"},
                               num_epochs=500, boundaries=(250, 375))
  c.optimizer.nesterov = True
  c.bn.mode = "global"
  c.data.train_split = "train[:45000]"
  c.data.eval_split = "train[45000:]"
  return base.with_variant(c, arg)
