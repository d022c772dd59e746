"""The fused VRNN step: the same numbers as :meth:`VRNN.step`'s general code with fewer operations.

The VRNN reads ``h_{t-1}`` four times per step (the first layers of the prior, of the proposal and of
the decoder, and the LSTM's recurrent projection) and ``phi_z(z_t)`` twice (the decoder's first
layer and the LSTM's input projection). The fused step reads each once: the weight matrices that
read the same input are stacked (``torch.cat`` of the existing parameters, once per sequence in
:func:`fused_weights`; the state-dict is unchanged), and everything that depends on ``x`` and the
side inputs alone (``phi_x(x_t)``'s share of the proposal's first layer and of the LSTM's input
projection, the side inputs' shares, every first-layer bias) is one batched ``[batch, T, ...]``
linear map in :meth:`VRNN.encode`. The prior's and the proposal's second layers are one block-
diagonal matmul, and both scales one softplus.

It applies to the default networks (one hidden layer per MLP, the default decoder, an LSTM cell)
without scheduled-sampling feedback; other configurations run the general step. Values agree with
the general step up to float rounding (summation order).

Dropout in training: the fused step draws the general step's dropout masks, with the same shapes in
the same order (prior hidden, proposal hidden, then the z draw, the z-encoder's hidden, the
decoder's hidden, the recurrent input ``[phi_x, phi_z, u]``), so a seeded pass gives the general
step's numbers with dropout on too. The recurrent input's mask is per particle, so the LSTM's input
projection of ``phi_x`` and of the side inputs is then computed per step, not per sequence.

Sizes: ``H`` recurrent state, ``F`` hidden units, ``E`` features, ``Z`` latents, ``U`` side inputs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from bbvae.sequential.gaussian import MIN_SCALE, RAW_SCALE_BIAS, normal_log_prob

__all__ = ["fused_applies", "fused_step", "fused_weights"]


def _relu_dropout(module: nn.Module) -> float | None:
    """The dropout rate of a ReLU slot (0.0 for a bare ReLU, ``p`` for :func:`bbvae.models.mlp`'s
    ``ReLU, Dropout(p)``), or ``None`` when ``module`` is no such slot."""
    p = 0.0
    if isinstance(module, nn.Sequential) and len(module) == 2 and isinstance(module[1], nn.Dropout):
        module, p = module[0], float(module[1].p)
    return p if isinstance(module, nn.ReLU) else None


def _relu(module: nn.Module, dropout: float | None) -> bool:
    """A ReLU slot; with ``dropout`` given (active), one whose rate is exactly that: the fused step
    applies the model's rate to every slot, so a slot without dropout (or with another rate) must
    run the general step."""
    rate = _relu_dropout(module)
    return rate is not None and (dropout is None or rate == dropout)


def _plain_mlp(net: nn.Module, dropout: float | None) -> bool:
    """``Linear, ReLU, Linear``: one hidden layer."""
    return (
        isinstance(net, nn.Sequential)
        and len(net) == 3
        and isinstance(net[0], nn.Linear)
        and _relu(net[1], dropout)
        and isinstance(net[2], nn.Linear)
    )


def _plain_head(head, dropout: float | None) -> bool:
    tail = head.tail
    return (
        len(head.hidden_sizes) == 1
        and isinstance(tail, nn.Sequential)
        and _relu(tail[0], dropout)
        and isinstance(tail[1], nn.Sequential)
        and len(tail[1]) == 1
        and isinstance(tail[1][0], nn.Linear)
    )


def fused_applies(model) -> bool:
    """Whether ``model`` (a VRNN) can run the fused step in its current mode (``model.fuse = False``
    turns it off: then the general step runs, calling every submodule)."""
    if not model.fuse or model.cell_type != "lstm":
        return False
    # (checked at every encode, once per sequence: a replaced submodule is seen at once)
    p = _dropout_rate(model) or None  # the rate every slot must have while dropout is active
    return (
        _plain_mlp(model.decoder, p)
        and _plain_mlp(model.z_encoder, p)
        and _plain_head(model.prior, p)
        and _plain_head(model.proposal, p)
        and isinstance(model.cell, nn.LSTMCell)
        and model.cell.bias
    )


class _PerStepLinear(torch.autograd.Function):
    """``feats [batch, T, E] -> [T, batch, N]``: ``feats_t @ weight.T + bias`` for each step ``t``.

    The forward is one ``baddbmm`` over time, so each step's rows are computed as by a matmul of
    ``batch`` rows whatever ``T`` is (one flat matmul over ``batch * T`` rows may round differently
    for another ``T``). The backward, which an expanded weight makes slow in ``bmm``, is two flat
    matmuls and a sum (first-order gradients only).
    """

    @staticmethod
    def forward(ctx, feats: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n_steps, n_out = feats.shape[1], weight.shape[0]
        ctx.save_for_backward(feats, weight)
        w_t = weight.t()
        return torch.baddbmm(
            bias.expand(n_steps, 1, n_out), feats.transpose(0, 1), w_t.expand(n_steps, *w_t.shape)
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        feats, weight = ctx.saved_tensors
        batch, n_steps, n_in = feats.shape
        flat = grad.transpose(0, 1).reshape(batch * n_steps, -1)  # [batch * T, N], rows as feats'
        grad_feats = (flat @ weight).view(batch, n_steps, n_in) if ctx.needs_input_grad[0] else None
        grad_weight = flat.t() @ feats.reshape(batch * n_steps, n_in) if ctx.needs_input_grad[1] else None
        grad_bias = flat.sum(dim=0) if ctx.needs_input_grad[2] else None
        return grad_feats, grad_weight, grad_bias


def _dropout_rate(model) -> float:
    """The dropout rate in force for this pass: ``model.dropout`` in training, else 0."""
    return model.dropout if model.training and model.dropout > 0 else 0.0


def _dropout_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    """The mask ``F.dropout`` would multiply ``like`` by (0 or ``1 / (1 - p)``), from the same draws."""
    return F.dropout(torch.ones_like(like), p, training=True)


def fused_weights(model, xf: torch.Tensor, inputs: torch.Tensor | None) -> tuple[dict, torch.Tensor]:
    """The stacked weights (a dict) and the x-only pre-activations ``[T, batch, 3F + 4H]``.

    With dropout active the LSTM block of the pre-activations holds only the gates' biases (the
    recurrent input is masked per particle, inside the step).

    Args:
        xf: ``phi_x(x)`` ``[batch, T, E]``.
        inputs: side inputs ``[batch, T, U]`` or ``None``.
    """
    hid, n_in, enc = model.hidden_size, model.input_size, model.encoded_size
    drop = _dropout_rate(model)
    wp, wq, wd = model.prior.inputs[0].weight, model.proposal.inputs[0].weight, model.decoder[0].weight
    cell = model.cell
    # The LSTM's gate rows reordered from nn.LSTMCell's (i, f, g, o) to (i, f, o, g): one sigmoid.
    gates = torch.cat(
        [torch.arange(0, 2 * hid), torch.arange(3 * hid, 4 * hid), torch.arange(2 * hid, 3 * hid)]
    )
    gates = gates.to(wp.device)
    w_ih = cell.weight_ih.index_select(0, gates)  # [4H, 2E + U]: columns phi_x, phi_z, u
    # Rows: prior (F), proposal (F), decoder (F), LSTM gates (4H); all read h_{t-1}.
    w_h = torch.cat([wp[:, :hid], wq[:, :hid], wd[:, :hid], cell.weight_hh.index_select(0, gates)], dim=0)
    # phi_z(z_t) is read by the decoder (F) and the LSTM input projection (4H).
    w_z = torch.cat([wd[:, hid + n_in :], w_ih[:, enc : 2 * enc]], dim=0)
    # x-only pre-activations (with every first-layer bias), batched over [batch, T].
    xw = torch.cat([xf.new_zeros(wp.shape[0], enc), model.proposal.inputs[1].weight], dim=0)
    gates_x = w_ih[:, :enc] if not drop else torch.zeros_like(w_ih[:, :enc])
    xw = torch.cat([xw, xf.new_zeros(wd.shape[0], enc), gates_x], dim=0)  # [3F + 4H, E]
    bias = torch.cat(
        [
            model.prior.bias,
            model.proposal.bias,
            model.decoder[0].bias,
            (cell.bias_ih + cell.bias_hh).index_select(0, gates),
        ]
    )
    feats = xf
    if inputs is not None and n_in > 0:
        gates_u = w_ih[:, 2 * enc :] if not drop else torch.zeros_like(w_ih[:, 2 * enc :])
        uw = torch.cat([wp[:, hid:], wq[:, hid:], wd[:, hid : hid + n_in], gates_u], dim=0)  # [3F + 4H, U]
        feats, xw = torch.cat([xf, inputs], dim=-1), torch.cat([xw, uw], dim=1)
    # One matmul per time step (a batched bmm, [T, batch, ...]): each step's rows then do not depend
    # on T, so a sequence cut at its length gives bitwise the numbers of the padded one.
    pre = _PerStepLinear.apply(feats, xw, bias).unsqueeze(2)  # [T, batch, 1, 3F + 4H]
    # Second layers of the prior and the proposal as one block-diagonal map whose output is
    # [p_loc, q_loc (residual), p_raw, q_raw] (Z each); the raw scales' offset is in the bias.
    lp, lq = model.prior.tail[1][0], model.proposal.tail[1][0]
    z = model.latent_size
    w2 = torch.block_diag(lp.weight, lq.weight)  # [4Z, 2F]: rows p_loc, p_raw, q_loc, q_raw
    b2 = torch.cat([lp.bias, lq.bias])
    offset = torch.cat([b2.new_zeros(z), b2.new_full((z,), RAW_SCALE_BIAS)]).repeat(2)
    order = torch.cat([torch.arange(s, s + z, device=w2.device) for s in (0, 2 * z, z, 3 * z)])
    weights = {
        "w_h": w_h,
        "w_z": w_z,
        "w2": w2.index_select(0, order),
        "b2": (b2 + offset).index_select(0, order),
        "sizes": (2 * wp.shape[0], wd.shape[0], 4 * hid),
        # (taken here, once per sequence: indexing an nn.Sequential is slow in a loop)
        "z_enc": (
            model.z_encoder[0].weight,
            model.z_encoder[0].bias,
            model.z_encoder[2].weight,
            model.z_encoder[2].bias,
        ),
        "dec": (model.decoder[2].weight, model.decoder[2].bias),
        "dropout": drop,
    }
    if drop:
        # Masked per particle, the recurrent input [phi_x, phi_z, u] is projected inside the step;
        # phi_z(z_t) then reaches the decoder through its own matmul.
        weights["w_in"] = w_ih  # [4H, 2E + U], gates (i, f, o, g)
        weights["w_dz"] = wd[:, hid + n_in :]  # [F, E]
    return weights, pre


def fused_step(model, state: dict, item: dict, z: torch.Tensor | None, reparametrize: bool):
    """One fused VRNN step: ``(new_state, z, log_p, log_q)`` with ``[batch, K, ...]`` leaves.

    Inside, the particles are rows of flat ``[batch * K, ...]`` tensors (plain 2-D matmuls).
    """
    fw = item["fused"]
    n_pq, n_d, n_g = fw["sizes"]
    n_z = model.latent_size
    h, c = state["h"], state["c"]
    batch, k, n_h = h.shape
    rows = batch * k
    drop = fw["dropout"]
    pre = (torch.matmul(h, fw["w_h"].t()) + item["pre"]).view(rows, -1)  # [batch * K, 3F + 4H]
    pq, d_h, g_h = pre.split([n_pq, n_d, n_g], dim=-1)
    hidden = torch.relu(pq)  # [batch * K, 2F]: prior's, proposal's
    if drop:  # the prior's mask, then the proposal's (the general step's order)
        half = n_pq // 2
        masks = torch.stack([_dropout_mask(hidden[:, :half], drop), _dropout_mask(hidden[:, half:], drop)], 1)
        hidden = (hidden.view(rows, 2, half) * masks).view(rows, n_pq)
    out2 = F.linear(hidden, fw["w2"], fw["b2"])  # [batch * K, 4Z]
    locs, raws = out2.split(2 * n_z, dim=-1)
    scales = F.softplus(raws) + MIN_SCALE  # (RAW_SCALE_BIAS is in b2)
    p_loc, q_loc = locs.split(n_z, dim=-1)
    p_scale, q_scale = scales.split(n_z, dim=-1)
    if model.resq:
        q_loc = q_loc + p_loc
    if z is None:
        eps = torch.randn_like(q_loc)
        if reparametrize:
            z_flat = torch.addcmul(q_loc, q_scale, eps)
        else:
            with torch.no_grad():
                z_flat = torch.addcmul(q_loc, q_scale, eps)
        z = z_flat.view(batch, k, n_z)
    else:
        z_flat = z.reshape(rows, n_z)
    w1, b1, w2, b2 = fw["z_enc"]
    if not drop:
        zf = F.linear(torch.relu(F.linear(z_flat, w1, b1)), w2, b2)
        d_z, g_z = torch.mm(zf, fw["w_z"].t()).split([n_d, n_g], dim=-1)
        params = F.linear(torch.relu(d_h + d_z), *fw["dec"]).view(batch, k, -1)
    else:
        zf = F.linear(F.dropout(torch.relu(F.linear(z_flat, w1, b1)), drop, training=True), w2, b2)
        d_hidden = F.dropout(torch.relu(d_h + torch.mm(zf, fw["w_dz"].t())), drop, training=True)
        params = F.linear(d_hidden, *fw["dec"]).view(batch, k, -1)
        parts = [item["xf"].unsqueeze(1).expand(batch, k, -1).reshape(rows, -1), zf]
        if item["u"] is not None:
            parts.append(item["u"].unsqueeze(1).expand(batch, k, -1).reshape(rows, -1))
        g_z = torch.mm(F.dropout(torch.cat(parts, dim=-1), drop, training=True), fw["w_in"].t())
    log_px = model.observation.log_prob(params, item["x"].unsqueeze(1))  # [batch, K]
    log_p = normal_log_prob(z_flat, p_loc, p_scale).view(batch, k) + log_px
    log_q = normal_log_prob(z_flat, q_loc, q_scale).view(batch, k)
    sig, gg = (g_h + g_z).split([3 * n_h, n_h], dim=-1)  # (i, f, o), g
    si, sf, so = torch.sigmoid(sig).chunk(3, dim=-1)
    c_new = torch.addcmul(sf * c.reshape(rows, n_h), si, torch.tanh(gg))
    h_new = so * torch.tanh(c_new)
    return {"h": h_new.view(batch, k, n_h), "c": c_new.view(batch, k, n_h)}, z, log_p, log_q
