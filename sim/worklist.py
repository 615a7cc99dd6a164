"""The simulator's timing worklist, compiled: dispatch and start/end cycles of every instruction of a program.

:func:`run_worklist` takes a program as flat integer arrays (each
instruction's unit, place in its unit's queue, token channels, beats,
bursts, vector-unit duration) and applies the latency rules of
``nmsat.hw.timing`` as ``nmsat.sim.core`` states them: the dispatcher in
order with queue room, each unit in order with its own rule, the n-th pop
of a channel after its n-th push.  It is compiled with numba when numba is
installed (``pip install nmsat`` brings it) and runs as plain Python
otherwise — the same function, so both give the same cycles
(``tests/sim/test_worklist.py`` checks it).

Not here: the static checks, errors, bus errors, hazards or data (``nmsat.sim.core``).
"""

from __future__ import annotations

import numpy as np

from ..hw import timing

__all__ = ["run_worklist", "COMPILED"]

LOAD, COMPUTE, STORE, SPARSIFY = 0, 1, 2, 3
UNITS = 4
CHANNELS = 8


def _worklist(unit, qpos, qstart, qidx, qlen, pops, pushes, beats, bursts, vector_end, queue_depth, read_latency,
              write_latency, drain, drain_gap, serial, dispatch_start, loads_in_flight, stores_in_flight):
    n = unit.shape[0]
    d = np.full(n, -1, np.int64)
    s = np.full(n, -1, np.int64)
    e = np.full(n, -1, np.int64)
    transfer = np.full(n, -1, np.int64)
    waited = np.zeros(n, np.int64)
    push_at = np.zeros((CHANNELS, n + 1), np.int64)
    pop_at = np.zeros((CHANNELS, n + 1), np.int64)
    n_push = np.zeros(CHANNELS, np.int64)
    n_pop = np.zeros(CHANNELS, np.int64)
    ptr = np.zeros(UNITS, np.int64)
    next_d = 0
    last_end = -1
    progress = True
    while progress:
        progress = False
        # the dispatcher: in order, once the instruction's queue has room (and, serial, everything before ended)
        while next_d < n:
            i = next_d
            c = dispatch_start if i == 0 else d[i - 1] + 1
            u = unit[i]
            j = qpos[i]
            if j >= queue_depth:
                freed_by = qidx[qstart[u] + j - queue_depth]
                if s[freed_by] < 0:
                    break
                c = max(c, s[freed_by] + 1)
            if serial:
                if i > 0 and e[i - 1] < 0:
                    break
                c = max(c, last_end + 1)
            d[i] = c
            next_d += 1
            progress = True
        # the units, each in its queue's order
        for u in range(UNITS):
            while ptr[u] < qlen[u]:
                i = qidx[qstart[u] + ptr[u]]
                if d[i] < 0:
                    break
                ready = d[i] + 1
                if ptr[u] > 0:
                    prev = qidx[qstart[u] + ptr[u] - 1]
                    if u == COMPUTE:  # after the previous transfer, its own transfer drain_gap after that one
                        ready = max(ready, transfer[prev], transfer[prev] + drain_gap - beats[i])
                    elif u == SPARSIFY:
                        ready = max(ready, e[prev] + 1)
                    elif u == LOAD:
                        ready = max(ready, s[prev] + bursts[prev])
                    else:
                        ready = max(ready, s[prev] + beats[prev])
                # transfers in flight: the one IN_FLIGHT + 1 places back must have finished
                if u == LOAD or u == STORE:
                    back = (loads_in_flight if u == LOAD else stores_in_flight) + 1
                    if ptr[u] >= back:
                        ready = max(ready, e[qidx[qstart[u] + ptr[u] - back]] + 1)
                token_ready = ready
                blocked = False
                for k in range(2):
                    ch = pops[i, k]
                    if ch < 0:
                        continue
                    if n_pop[ch] >= n_push[ch]:
                        blocked = True
                        break
                    token_ready = max(token_ready, push_at[ch, n_pop[ch]] + 1)
                if blocked:
                    break
                start = token_ready
                waited[i] = start - ready
                for k in range(2):
                    ch = pops[i, k]
                    if ch >= 0:
                        pop_at[ch, n_pop[ch]] = start
                        n_pop[ch] += 1
                if u == COMPUTE:
                    transfer[i] = start + beats[i]
                    end = transfer[i] + drain
                elif u == SPARSIFY:
                    end = start + vector_end[i]
                elif u == LOAD:
                    prev_end = e[qidx[qstart[u] + ptr[u] - 1]] if ptr[u] > 0 else -1
                    end = max(start + read_latency, prev_end + 1) + beats[i] - 1
                else:
                    end = start + beats[i] + write_latency
                s[i] = start
                e[i] = end
                last_end = max(last_end, end)
                for k in range(2):
                    ch = pushes[i, k]
                    if ch >= 0:
                        push_at[ch, n_push[ch]] = end
                        n_push[ch] += 1
                ptr[u] += 1
                progress = True
    return d, s, e, transfer, waited, push_at, n_push, pop_at, n_pop, next_d, last_end


try:
    from numba import njit
except ImportError:  # plain Python: the same cycles, slower
    _compiled = _worklist
    COMPILED = False
else:
    _compiled = njit(cache=True, nogil=True)(_worklist)
    COMPILED = True


def run_worklist(cfg, unit, qpos, pops, pushes, beats, bursts, vector_end, serial: bool, dispatch_start: int,
                 compiled: bool = True):
    """Cycles of every instruction: ``(d, s, e, transfer, waited, pushes, pops, next_d, last_end)`` with −1 for
    "never", ``pushes``/``pops`` the cycles of each channel's pushes and pops in order (lists of arrays).

    ``unit``, ``qpos`` (place in its unit's queue), ``beats``, ``bursts``, ``vector_end`` (a vector-unit
    instruction's last busy cycle from its start): one int per instruction; ``pops``/``pushes``: ``[n, 2]``
    channel indices, −1 for none.  ``compiled=False`` runs the plain-Python function."""
    unit = np.asarray(unit, np.int64)
    order = np.argsort(unit, kind="stable")  # each unit's instructions in program order
    qlen = np.bincount(unit, minlength=UNITS).astype(np.int64)
    qstart = np.concatenate([[0], np.cumsum(qlen)[:-1]]).astype(np.int64)
    fn = _compiled if compiled else _worklist
    d, s, e, transfer, waited, push_at, n_push, pop_at, n_pop, next_d, last_end = fn(
        unit, np.asarray(qpos, np.int64), qstart, order.astype(np.int64), qlen, np.asarray(pops, np.int64),
        np.asarray(pushes, np.int64), np.asarray(beats, np.int64), np.asarray(bursts, np.int64),
        np.asarray(vector_end, np.int64), int(cfg.queue_depth), int(cfg.mem_read_latency), int(cfg.mem_write_latency),
        int(timing.drain_cycles(cfg)), int(timing.drain_gap(cfg)), bool(serial), int(dispatch_start), int(timing.LOADS_IN_FLIGHT),
        int(timing.STORES_IN_FLIGHT))
    pushes_by_channel = [push_at[ch, :n_push[ch]] for ch in range(CHANNELS)]
    pops_by_channel = [pop_at[ch, :n_pop[ch]] for ch in range(CHANNELS)]
    return d, s, e, transfer, waited, pushes_by_channel, pops_by_channel, int(next_d), int(last_end)
