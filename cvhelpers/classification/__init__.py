"""Image classification recipes on top of the shared layers: transfer learning (``transfer``),
class imbalance (``imbalance``) and progressive resizing (``progressive``). Its data readers,
models, metrics and training step are the shared ones (``data``, ``models``, ``evaluation``,
``train.steps.supervised_step``)."""
