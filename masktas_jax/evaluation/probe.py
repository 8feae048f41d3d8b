"""Linear probes on frozen features: rank's 'linear' yardstick, and the
head LP-FT fine-tuning starts from (`finetune.head_init='probe'`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Full-batch Adam on standardised features.
PROBE_STEPS, PROBE_LR, PROBE_WEIGHT_DECAY = 300, 0.01, 1e-4


def fit_linear_probe(features: jax.Array, labels: jax.Array,
                     num_classes: int, steps: int = PROBE_STEPS,
                     lr: float = PROBE_LR,
                     weight_decay: float = PROBE_WEIGHT_DECAY
                     ) -> dict[str, jax.Array]:
  """A softmax-regression probe on standardised features (traceable).

  The features are standardised with their own channel statistics
  (channels that are zero throughout, a narrower subnet's padding, stay
  zero: scale 0), then a linear classifier is trained by full-batch Adam
  with L2 decay for `steps` steps from zero weights.

  Args:
    features: (N, D) float32; labels (N,) ints.

  Returns:
    {'mean': (D,), 'scale': (D,), 'kernel': (D, K), 'bias': (K,)}: logits
    of features f are ((f - mean) * scale) @ kernel + bias.
  """
  opt = optax.adamw(lr, weight_decay=weight_decay)
  targets = jax.nn.one_hot(labels, num_classes)
  mean = features.mean(0)
  std = features.std(0)
  scale = jnp.where(std > 1e-6, 1 / jnp.maximum(std, 1e-6), 0.0)
  x = (features - mean) * scale
  params = {'kernel': jnp.zeros((features.shape[1], num_classes)),
            'bias': jnp.zeros((num_classes,))}

  def loss(p):
    logits = x @ p['kernel'] + p['bias']
    return jnp.mean(optax.softmax_cross_entropy(logits, targets))

  def step(carry, _):
    p, state = carry
    updates, state = opt.update(jax.grad(loss)(p), state, p)
    return (optax.apply_updates(p, updates), state), None

  (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None,
                                length=steps)
  return {'mean': mean, 'scale': scale, **params}


def probe_logits(probe: dict[str, jax.Array], features: jax.Array
                 ) -> jax.Array:
  """(M, D) features -> (M, K) logits of a `fit_linear_probe` probe."""
  return ((features - probe['mean']) * probe['scale']) @ probe['kernel'] + (
      probe['bias'])


def linear_probe_top1(train_features: np.ndarray, train_labels: np.ndarray,
                      query_features: np.ndarray, query_labels: np.ndarray,
                      num_classes: int, steps: int = PROBE_STEPS,
                      lr: float = PROBE_LR,
                      weight_decay: float = PROBE_WEIGHT_DECAY) -> np.ndarray:
  """Top-1 of a `fit_linear_probe` probe per subnet, all in one call
  (vmapped over the subnets).

  Args:
    train_features: (P, N, D) support features of P subnets; train_labels
      (N,) ints.
    query_features: (P, M, D); query_labels (M,) ints.

  Returns:
    (P,) top-1 accuracy on the queries.
  """

  def one(train, query):
    probe = fit_linear_probe(train, jnp.asarray(train_labels), num_classes,
                             steps, lr, weight_decay)
    predicted = jnp.argmax(probe_logits(probe, query), -1)
    return jnp.mean(predicted == jnp.asarray(query_labels))

  return np.asarray(jax.jit(jax.vmap(one))(
      jnp.asarray(train_features, jnp.float32),
      jnp.asarray(query_features, jnp.float32)))
