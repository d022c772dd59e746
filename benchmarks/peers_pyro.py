"""The same VRNN written in Pyro (``pyro-ppl``, the ``bench`` extra), for ``bench_peers.py``.

A model and a guide as a Pyro user writes them: ``pyro.sample`` per time step inside a ``pyro.plate``
over the sequences, ``poutine.mask`` past each sequence's length, the networks of
:class:`peers_plain.HandVRNN` (so the weights are shared with the other two implementations), and
``RenyiELBO(alpha=0, num_particles=K, vectorize_particles=True)``, Pyro's IWAE objective. The model and
the guide each run the recurrence (each program needs ``h_t``), as in Pyro's own VRNN-style examples.

Pyro has no FIVO objective, so it takes part in the IWAE rows only. Note that ``RenyiELBO`` weighs
a particle by the product of the whole batch's weights (its log-weight is summed over the plate), so
for ``B > 1`` its value is not the per-sequence IWAE bound; the work per step, which is what is timed,
is the same. At ``K = 1`` its loss is ``B`` times bbvae's (``tests/test_bench_peers.py`` checks it).
"""

from __future__ import annotations

import torch
from peers_plain import _scale


def import_pyro():
    """``(pyro, dist, poutine)``; ImportError naming the extra when Pyro is not installed."""
    try:
        import pyro
        import pyro.distributions as dist
        from pyro import poutine
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the Pyro peer of bench_peers.py needs pyro-ppl: pip install bbvae[bench]") from err
    return pyro, dist, poutine


class PyroVRNN:
    """``step()`` = one RenyiELBO(alpha=0) gradient evaluation; the caller runs the optimiser."""

    def __init__(self, nets, k: int) -> None:
        pyro, dist, poutine = import_pyro()
        self.pyro, self.dist, self.poutine = pyro, dist, poutine
        self.nets = nets
        self.k = k
        self.elbo = pyro.infer.RenyiELBO(
            alpha=0.0, num_particles=k, vectorize_particles=True, max_plate_nesting=1
        )

    def _prior(self, h):
        loc, raw = self.nets.prior(h).chunk(2, -1)
        return loc, _scale(raw)

    def _cell(self, xf_t, zf, h, c):
        """The LSTM step on ``[..., B, *]`` tensors (particles vectorised on the left)."""
        lead = zf.shape[:-1]
        inp = torch.cat([xf_t.expand(*lead, xf_t.shape[-1]), zf], -1)
        flat = inp.reshape(-1, inp.shape[-1])
        rows = flat.shape[0]
        h = h.expand(*lead, h.shape[-1]).reshape(rows, -1)
        c = c.expand(*lead, c.shape[-1]).reshape(rows, -1)
        h2, c2 = self.nets.cell(flat, (h, c))
        return h2.reshape(*lead, -1), c2.reshape(*lead, -1)

    def model(self, x, mask):
        pyro, dist, poutine = self.pyro, self.dist, self.poutine
        nets = self.nets
        pyro.module("vrnn", nets)
        batch = x.shape[0]
        xf = nets.phi_x(x)
        h = x.new_zeros(batch, nets.hidden)
        c = x.new_zeros(batch, nets.hidden)
        with pyro.plate("sequences", batch, dim=-1):
            for t, (x_t, xf_t, m_t) in enumerate(zip(x.unbind(1), xf.unbind(1), mask.unbind(1))):
                p_loc, p_scale = self._prior(h)
                with poutine.mask(mask=m_t):
                    z = pyro.sample(f"z_{t}", dist.Normal(p_loc, p_scale).to_event(1))
                    zf = nets.phi_z(z)
                    hk = h.expand(*zf.shape[:-1], h.shape[-1])
                    logits = nets.decoder(torch.cat([hk, zf], -1))
                    pyro.sample(f"x_{t}", dist.Bernoulli(logits=logits).to_event(1), obs=x_t)
                h, c = self._cell(xf_t, zf, h, c)

    def guide(self, x, mask):
        pyro, dist, poutine = self.pyro, self.dist, self.poutine
        nets = self.nets
        pyro.module("vrnn", nets)
        batch = x.shape[0]
        xf = nets.phi_x(x)
        h = x.new_zeros(batch, nets.hidden)
        c = x.new_zeros(batch, nets.hidden)
        with pyro.plate("sequences", batch, dim=-1):
            for t, (xf_t, m_t) in enumerate(zip(xf.unbind(1), mask.unbind(1))):
                p_loc, _ = self._prior(h)
                hx = torch.cat([h, xf_t.expand(*h.shape[:-1], xf_t.shape[-1])], -1)
                q_loc, q_raw = nets.proposal(hx).chunk(2, -1)
                with poutine.mask(mask=m_t):
                    z = pyro.sample(f"z_{t}", dist.Normal(q_loc + p_loc, _scale(q_raw)).to_event(1))
                zf = nets.phi_z(z)
                h, c = self._cell(xf_t, zf, h, c)

    def loss_and_grads(self, x, mask) -> float:
        """The negative bound (Pyro's loss, summed over the batch); fills the parameters' grads."""
        return self.elbo.loss_and_grads(self.model, self.guide, x, mask)

    def loss(self, x, mask) -> float:
        return self.elbo.loss(self.model, self.guide, x, mask)
