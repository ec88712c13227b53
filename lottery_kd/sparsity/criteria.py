"""Data-dependent and data-free pruning criteria: SNIP, GraSP, SynFlow.

Each is a masking function (contract: masking functions), registered by name (in
lottery_kd.sparsity.pruning, which imports this module), usable at
initialisation or on any snapshot, with any layer-wise distribution (`context["distribution"]`).
The scores are pure functions of a loss (or forward) function, so they can be checked on a tiny
network by hand; the registered functions build that function from the context:

    context["loss_fn"]      params -> scalar loss (takes precedence), or
    context["model"], context["batch_stats"], context["batch"] = (images, labels): cross-entropy
                            of the model in training mode on that (normalised) batch.

- snip (Lee et al. 2019): |w * dL/dw| at the masked weights; the smallest go.
- grasp (Wang et al. 2020): S = -w * (H g) with g = dL/dw and H the Hessian, the loss taken at
  logits / T (T = 200 by default, as the authors' code); the largest S go, so the weights that
  keep the gradient flowing stay.
- synflow (Tanaka et al. 2020): data-free. R = sum of the outputs of the network with |w| (every
  parameter and BatchNorm statistic made non-negative) on an all-ones input; scores |w * dR/dw|,
  recomputed over `rounds` (100) with the density shrinking exponentially to the target, so no
  layer collapses.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lottery_kd.training import losses

from lottery_kd.sparsity import masks as masks_lib
from lottery_kd.sparsity.masking import prune_by_scores, prune_to_keep

PyTree = Any
LossFn = Callable[[PyTree], jax.Array]


# ---- scores: pure functions of a loss / forward function ------------------------------------
def snip_scores(loss_fn: LossFn, params: PyTree) -> PyTree:
    """|w * dL/dw|."""
    grads = jax.grad(loss_fn)(params)
    return jax.tree.map(lambda w, g: jnp.abs(w * g), params, grads)


def grasp_scores(loss_fn: LossFn, params: PyTree) -> PyTree:
    """w * (H g): the negative of GraSP's S = -w * Hg, so that the lowest are removed."""
    grads = jax.lax.stop_gradient(jax.grad(loss_fn)(params))

    def grad_dot_g(p):
        return sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(jax.grad(loss_fn)(p)),
                                                  jax.tree.leaves(grads)))

    hessian_grad = jax.grad(grad_dot_g)(params)
    return jax.tree.map(lambda w, hg: w * hg, params, hessian_grad)


def synflow_scores(forward_fn: Callable[[PyTree], jax.Array], params: PyTree) -> PyTree:
    """|w * dR/dw| with R = sum(forward_fn(|w|)) (forward_fn feeds the all-ones input)."""
    positive = jax.tree.map(jnp.abs, params)
    grads = jax.grad(lambda p: jnp.sum(forward_fn(p)))(positive)
    return jax.tree.map(lambda w, g: jnp.abs(w * g), positive, grads)


# ---- context -> loss / forward functions ----------------------------------------------------
def _loss_fn(context: dict, masks: PyTree, temperature: float = 1.0) -> LossFn:
    if "loss_fn" in context:
        return context["loss_fn"]
    for key in ("model", "batch"):
        if key not in context:
            raise ValueError(f"this criterion scores weights on data: pass context[{key!r}] "
                             "(or context['loss_fn'])")
    model, (images, labels) = context["model"], context["batch"]
    batch_stats = context.get("batch_stats", {})

    def loss(params):
        logits, _ = model.apply({"params": masks_lib.apply(params, masks),
                                 "batch_stats": batch_stats}, images, train=True,
                                mutable=["batch_stats"])
        return losses.cross_entropy(logits / temperature, labels)

    return loss


def _forward_fn(context: dict, input_shape: Sequence[int]) -> Callable[[PyTree], jax.Array]:
    if "forward_fn" in context:
        return context["forward_fn"]
    if "model" not in context:
        raise ValueError("synflow needs context['model'] (or context['forward_fn'])")
    model = context["model"]
    stats = jax.tree.map(jnp.abs, context.get("batch_stats", {}))
    ones = jnp.ones((1, *input_shape), jnp.float32)
    return lambda p: model.apply({"params": p, "batch_stats": stats}, ones, train=False)


# ---- masking functions ----------------------------------------------------------------------
def snip(params: PyTree, masks: PyTree, fraction: float, *, rng: Optional[jax.Array] = None,
         scope: masks_lib.Scope = "conv", **context: Any) -> PyTree:
    """SNIP connection sensitivity |w * dL/dw| on context's batch."""
    scores = snip_scores(_loss_fn(context, masks), masks_lib.apply(params, masks))
    return prune_by_scores(scores, masks, fraction, scope=scope,
                           distribution=context.get("distribution", "global"),
                           structure=context.get("structure", "unstructured"))


def grasp(params: PyTree, masks: PyTree, fraction: float, *, rng: Optional[jax.Array] = None,
          scope: masks_lib.Scope = "conv", **context: Any) -> PyTree:
    """GraSP: keep the weights whose removal would reduce the gradient flow most."""
    loss_fn = _loss_fn(context, masks, context.get("grasp_temperature", 200.0))
    scores = grasp_scores(loss_fn, masks_lib.apply(params, masks))
    return prune_by_scores(scores, masks, fraction, scope=scope,
                           distribution=context.get("distribution", "global"),
                           structure=context.get("structure", "unstructured"))


def synflow(params: PyTree, masks: PyTree, fraction: float, *, rng: Optional[jax.Array] = None,
            scope: masks_lib.Scope = "conv", **context: Any) -> PyTree:
    """Iterative SynFlow: `context["synflow_rounds"]` (100) rounds of exponentially shrinking
    density, ending with exactly ceil(fraction x remaining) weights removed. With a structure
    (N:M, block:B) the rounds run unstructured and their last scores choose the structured mask
    (prune_by_scores from the masks given)."""
    rounds = int(context.get("synflow_rounds", 100))
    if rounds < 1:
        raise ValueError(f"synflow_rounds must be >= 1, got {rounds}")
    forward = _forward_fn(context, context.get("input_shape", ()))
    distribution = context.get("distribution", "global")
    structure = context.get("structure", "unstructured")
    # The final per-layer (or total) keep counts, fixed before the rounds start.
    final = prune_by_scores(jax.tree.map(jnp.abs, params), masks, fraction, scope=scope,
                            distribution=distribution, structure=structure)
    start_counts = masks_lib.layer_counts(masks, scope)
    final_counts = masks_lib.layer_counts(final, scope)
    names = list(start_counts)
    start = np.array([start_counts[n][0] for n in names], dtype=np.float64)
    target = np.array([final_counts[n][0] for n in names], dtype=np.float64)
    scores_fn = jax.jit(lambda p, m: synflow_scores(forward, masks_lib.apply(p, m)))
    current = masks
    for k in range(1, rounds + 1):
        scores = scores_fn(params, current)
        if distribution == "global":
            keep_total = int(round(start.sum()
                                   * (target.sum() / max(start.sum(), 1)) ** (k / rounds)))
            keep: Sequence[int] | int = int(target.sum()) if k == rounds else keep_total
        else:
            ratio = np.divide(target, start, out=np.zeros_like(target), where=start > 0)
            keep = [int(t) if k == rounds else int(round(s * r ** (k / rounds)))
                    for s, t, r in zip(start, target, ratio)]
        current = prune_to_keep(scores, current, keep, scope=scope)
    if structure != "unstructured":
        return prune_by_scores(scores_fn(params, current), masks, fraction, scope=scope,
                               distribution=distribution, structure=structure)
    return current
