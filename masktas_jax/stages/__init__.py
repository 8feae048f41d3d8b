"""The modes of `python -m masktas_jax.main`, one module each, named after
its mode; each ends with its `stage.Stage` declaration (`registry`). No
stage imports another, but compile, which builds the others' Tasks to
compile them."""
