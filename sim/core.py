"""The simulator of the whole core: runs a program from memory, cycle-exact and bit-exact.

:class:`CoreModel` is the twin of the gateware ``nmsat.hw.core.Core``.  It never
steps cycle by cycle: a program is decoded at once (vectorised), checked
statically, then timed by a small worklist over the three units and their
dependency tokens using the latency rules of :mod:`nmsat.sim.timing`, then
executed for its data in program order with the vectorised numerics of
:mod:`nmsat.sim.numerics` (a race-free program's result does not depend on
timing; serial and pipelined runs must agree, see the tests).

Not here: building programs (``nmsat.dataflow``) or talking to a device
(``nmsat.sw``).
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
from dataclasses import dataclass, field

import numpy as np

from ..hw.config import SATConfig
from ..hw.isa import INSTRUCTION_BYTES, Buffer, ErrorCode, Opcode, Status, decode_program
from . import numerics, timing

__all__ = ["CoreModel", "RunResult", "MemoryModelError"]

LOAD, COMPUTE, STORE = 0, 1, 2
UNIT_NAMES = ("load", "compute", "store")
_UNIT_OF_OPCODE = {Opcode.LOAD.value: LOAD, Opcode.GEMM.value: COMPUTE, Opcode.STORE.value: STORE}
#: token channels: load→compute, compute→load, compute→store, store→compute
CHANNELS = ("l2c", "c2l", "c2s", "s2c")
L2C, C2L, C2S, S2C = range(4)
_POP_PREV = {COMPUTE: L2C, STORE: C2S}
_POP_NEXT = {LOAD: C2L, COMPUTE: S2C}
_PUSH_PREV = {COMPUTE: C2L, STORE: S2C}
_PUSH_NEXT = {LOAD: L2C, COMPUTE: C2S}


class MemoryModelError(Exception):
    """The program touched bytes outside the memory array given to the simulator (a harness problem)."""


@dataclass
class RunResult:
    """What one run of a program leaves: status, error, cycle count and per-unit statistics."""

    status: Status
    error: ErrorCode
    cycles: int
    error_pc: int = 0
    busy: dict[str, int] = field(default_factory=dict)  # cycles each unit had work in flight
    token_stall: dict[str, int] = field(default_factory=dict)  # cycles a head instruction waited for tokens
    instructions: int = 0
    gemm_macs: int = 0  # useful MAC slots: Σ k · rows · cols over GEMMs

    @property
    def ok(self) -> bool:
        return self.status is Status.DONE

    def utilisation(self, cfg: SATConfig) -> float:
        """Fraction of the PE array's MAC slots used over the whole run."""
        return self.gemm_macs / (self.cycles * cfg.rows * cfg.cols) if self.cycles else 0.0


def check_program(cfg: SATConfig, f: dict[str, np.ndarray]) -> tuple[int, ErrorCode]:
    """Static checks of every instruction (vectorised); returns (first bad index, code) or (-1, NONE)."""
    n = len(f["opcode"])
    op = f["opcode"]
    code = np.zeros(n, dtype=np.int64)

    def flag(cond: np.ndarray, err: ErrorCode) -> None:
        code[:] = np.where((code == 0) & cond, err.value, code)

    known = np.isin(op, [o.value for o in Opcode])
    flag(~known, ErrorCode.BAD_OPCODE)
    is_load, is_store = op == Opcode.LOAD.value, op == Opcode.STORE.value
    is_mem, is_gemm, is_finish = is_load | is_store, op == Opcode.GEMM.value, op == Opcode.FINISH.value
    buf = f["buffer"]
    word = np.select([buf == Buffer.A.value, buf == Buffer.B.value, buf == Buffer.ACC.value],
                     [cfg.a_word_bytes, cfg.b_word_bytes, cfg.acc_word_bytes], 0)
    depth = np.select([buf == Buffer.A.value, buf == Buffer.B.value, buf == Buffer.ACC.value],
                      [cfg.a_depth, cfg.b_depth, cfg.acc_depth], 0)
    # token flags that have no neighbour: LOAD has no prev, STORE no next, FINISH none
    no_neighbour = (is_load & ((f["pop_prev"] | f["push_prev"]) != 0)) | \
                   (is_store & ((f["pop_next"] | f["push_next"]) != 0)) | \
                   (is_finish & ((f["pop_prev"] | f["pop_next"] | f["push_prev"] | f["push_next"]) != 0))
    flag(no_neighbour, ErrorCode.BAD_ARGS)
    # LOAD fills A or B; STORE drains ACC (the ACC buffer's ports belong to the drain and the STORE unit)
    flag(is_mem & ((buf == 3) | (is_store & (buf != Buffer.ACC.value)) | (is_load & (buf == Buffer.ACC.value))
                   | (f["rows"] == 0)), ErrorCode.BAD_ARGS)
    flag(is_mem & (f["sram_addr"] + f["rows"] > depth), ErrorCode.SRAM_RANGE)
    last_byte = f["dram_addr"] + (f["rows"] - 1) * f["dram_stride"] + word
    flag(is_mem & ((f["dram_addr"] % cfg.bus_bytes != 0) | (f["dram_stride"] % cfg.bus_bytes != 0)
                   | (last_byte > (1 << cfg.addr_bits))), ErrorCode.DRAM_RANGE)
    flag(is_gemm & (f["k"] == 0), ErrorCode.BAD_ARGS)
    flag(is_gemm & ((f["a_addr"] + f["k"] > cfg.a_depth) | (f["b_addr"] + f["k"] > cfg.b_depth)
                    | (f["acc_addr"] + cfg.rows > cfg.acc_depth)), ErrorCode.SRAM_RANGE)
    bad = np.flatnonzero(code)
    if len(bad):
        return int(bad[0]), ErrorCode(int(code[bad[0]]))
    return -1, ErrorCode.NONE


class CoreModel:
    """Simulator twin of the core for one :class:`SATConfig`.  Buffers persist across runs, as in the core."""

    def __init__(self, cfg: SATConfig):
        self.cfg = cfg
        self.a = np.zeros((cfg.a_depth, cfg.rows), dtype=np.uint16)  # bf16 bits
        self.b = np.zeros((cfg.b_depth, cfg.cols), dtype=np.uint16)
        self.acc = np.zeros((cfg.acc_depth, cfg.cols), dtype=np.float32)
        self._timing_cache: dict[tuple[bytes, bool], RunResult] = {}

    # ------------------------------------------------------------------ run

    def run(self, memory: np.ndarray, program_addr: int, program_len: int, *, serial: bool = False,
            numerics: bool = True) -> RunResult:
        """Run the program of ``program_len`` instructions at ``program_addr`` against ``memory``.

        ``memory`` is a uint8 array standing for DRAM from address 0; STOREs
        write into it.  ``serial`` forces fully serial execution (the core's
        debug switch).  ``numerics=False`` computes timing only.
        """
        cfg = self.cfg
        if memory.dtype != np.uint8 or memory.ndim != 1:
            raise TypeError("memory must be a 1-D uint8 array")
        if not 1 <= program_len <= cfg.imem_depth:
            return RunResult(Status.ERROR, ErrorCode.PROGRAM_TOO_LONG, cycles=1)
        nbytes = program_len * INSTRUCTION_BYTES
        if program_addr % cfg.bus_bytes or program_addr + nbytes > 1 << cfg.addr_bits:
            return RunResult(Status.ERROR, ErrorCode.DRAM_RANGE, cycles=1)
        blob = self._read(memory, program_addr, nbytes).tobytes()
        fields = decode_program(blob)
        fetch_beats = -(-nbytes // cfg.bus_bytes)
        dispatch_start = cfg.mem_read_latency + fetch_beats
        result = self._schedule(fields, dispatch_start, serial)
        if numerics and result.status is Status.DONE:
            self._execute(memory, fields, result.instructions)
        return result

    def time_program(self, words: list[int], *, serial: bool = False) -> RunResult:
        """Timing only, from the instruction words (no memory image): what ``run`` would report.

        A program's timing depends on nothing but its words and the config, so
        results are memoised by a digest of the words (a training step repeats
        many layer shapes).  The result returned is a copy.
        """
        cfg = self.cfg
        if not 1 <= len(words) <= cfg.imem_depth:
            return RunResult(Status.ERROR, ErrorCode.PROGRAM_TOO_LONG, cycles=1)
        from ..hw.isa import to_bytes
        blob = to_bytes(words)
        key = (hashlib.blake2b(blob, digest_size=16).digest(), serial)
        cached = self._timing_cache.get(key)
        if cached is None:
            nbytes = len(words) * INSTRUCTION_BYTES
            cached = self._schedule(decode_program(blob), cfg.mem_read_latency + -(-nbytes // cfg.bus_bytes), serial)
            if len(self._timing_cache) >= 256:
                self._timing_cache.pop(next(iter(self._timing_cache)))
            self._timing_cache[key] = cached
        return dataclasses.replace(cached, busy=dict(cached.busy), token_stall=dict(cached.token_stall))

    # ------------------------------------------------------------------ timing

    def _schedule(self, f: dict[str, np.ndarray], dispatch_start: int, serial: bool) -> RunResult:
        cfg = self.cfg
        n = len(f["opcode"])
        bad_pc, bad_code = check_program(cfg, f)
        op = f["opcode"].tolist()
        finish_pcs = [i for i, o in enumerate(op[: bad_pc if bad_pc >= 0 else n]) if o == Opcode.FINISH.value]
        # the dispatcher stops at the first FINISH, bad instruction, or the end of the program
        stop_pc = finish_pcs[0] if finish_pcs else (bad_pc if bad_pc >= 0 else n)
        stop_code = ErrorCode.NONE if finish_pcs else (bad_code if bad_pc >= 0 else ErrorCode.NO_FINISH)

        unit = [_UNIT_OF_OPCODE[o] for o in op[:stop_pc]]
        # per-instruction duration parameters: (GEMM: MAC cycles | transfers: data beats, LOAD bursts)
        word = {Buffer.A.value: cfg.a_word_bytes, Buffer.B.value: cfg.b_word_bytes, Buffer.ACC.value: cfg.acc_word_bytes}
        ks, bufs, rows_l, addrs, strides = (f[x][:stop_pc].tolist() for x in ("k", "buffer", "rows", "dram_addr", "dram_stride"))
        params = []
        for i in range(stop_pc):
            if unit[i] == COMPUTE:
                params.append((timing.gemm_mac_cycles(ks[i]), 0))
            else:
                wb = word[bufs[i]]
                beats = timing.transfer_beats(cfg, rows_l[i], wb)
                nb = timing.burst_count(cfg, addrs[i], rows_l[i], wb, strides[i]) if unit[i] == LOAD else 0
                params.append((beats, nb))
        # token channels as indices into CHANNELS, per instruction
        flag_lists = [f[x][:stop_pc].tolist() for x in ("pop_prev", "pop_next", "push_prev", "push_next")]
        pop_ch, push_ch = [], []
        for i in range(stop_pc):
            u = unit[i]
            pops_i, pushes_i = [], []
            if flag_lists[0][i]:
                pops_i.append(_POP_PREV[u])
            if flag_lists[1][i]:
                pops_i.append(_POP_NEXT[u])
            if flag_lists[2][i]:
                pushes_i.append(_PUSH_PREV[u])
            if flag_lists[3][i]:
                pushes_i.append(_PUSH_NEXT[u])
            pop_ch.append(pops_i)
            push_ch.append(pushes_i)

        queues: list[list[int]] = [[], [], []]
        qpos = []
        for i in range(stop_pc):
            qpos.append(len(queues[unit[i]]))
            queues[unit[i]].append(i)
        d = [None] * stop_pc  # dispatch cycle
        s = [None] * stop_pc  # start cycle
        e = [None] * stop_pc  # last busy cycle (pushes happen here)
        transfer = [None] * stop_pc  # GEMM: cycle the accumulators move to the shadow registers
        drain = timing.drain_cycles(cfg)
        # per channel (index into CHANNELS): the cycles of its pushes and of its pops, in order
        pushes: list[list[int]] = [[] for _ in CHANNELS]
        pops: list[list[int]] = [[] for _ in CHANNELS]
        ptr = [0, 0, 0]
        next_d = 0
        last_end = -1  # max e over started instructions (serial mode and FINISH)
        stall = [0, 0, 0]
        Q = cfg.queue_depth
        Lr, Lw = cfg.mem_read_latency, cfg.mem_write_latency
        in_flight = {LOAD: timing.LOADS_IN_FLIGHT, STORE: timing.STORES_IN_FLIGHT}

        progress = True
        while progress:
            progress = False
            # dispatcher
            while next_d < stop_pc:
                i = next_d
                c = dispatch_start if i == 0 else d[i - 1] + 1
                u, j = unit[i], qpos[i]
                if j >= Q:
                    freed_by = queues[u][j - Q]
                    if s[freed_by] is None:
                        break
                    c = max(c, s[freed_by] + 1)
                if serial:
                    if i > 0 and e[i - 1] is None:
                        break
                    c = max(c, last_end + 1)
                d[i] = c
                next_d += 1
                progress = True
            # units
            for u in (LOAD, COMPUTE, STORE):
                while ptr[u] < len(queues[u]):
                    i = queues[u][ptr[u]]
                    if d[i] is None:
                        break
                    ready = d[i] + 1
                    if ptr[u] > 0:
                        prev = queues[u][ptr[u] - 1]
                        if u == COMPUTE:
                            ready = max(ready, transfer[prev])
                        elif u == LOAD:
                            ready = max(ready, s[prev] + params[prev][1])
                        else:
                            ready = max(ready, s[prev] + params[prev][0])
                    # transfers in flight: the one IN_FLIGHT + 1 places back must have finished
                    back = in_flight.get(u, 0) + 1
                    if u != COMPUTE and ptr[u] >= back:
                        ready = max(ready, e[queues[u][ptr[u] - back]] + 1)
                    token_ready = ready
                    blocked = False
                    for ch in pop_ch[i]:
                        nth = len(pops[ch])
                        if nth >= len(pushes[ch]):
                            blocked = True
                            break
                        token_ready = max(token_ready, pushes[ch][nth] + 1)
                    if blocked:
                        break
                    start = token_ready
                    stall[u] += start - ready
                    for ch in pop_ch[i]:
                        pops[ch].append(start)
                    if u == COMPUTE:
                        prev_drain = e[queues[u][ptr[u] - 1]] if ptr[u] > 0 else -1
                        transfer[i] = max(start + params[i][0], prev_drain + 1)
                        end = transfer[i] + drain
                    elif u == LOAD:
                        beats = params[i][0]
                        prev_end = e[queues[u][ptr[u] - 1]] if ptr[u] > 0 else -1
                        end = max(start + Lr, prev_end + 1) + beats - 1
                    else:
                        end = start + params[i][0] + Lw
                    s[i], e[i] = start, end
                    last_end = max(last_end, end)
                    for ch in push_ch[i]:
                        pushes[ch].append(end)
                    ptr[u] += 1
                    progress = True

        events: list[tuple[int, int, ErrorCode, int]] = []  # (cycle, code, ErrorCode, pc)
        # token overflow: after the n-th push at cycle t the count is n - #pops started by t
        for ch in range(len(CHANNELS)):
            for nth, t in enumerate(pushes[ch], start=1):
                count = nth - bisect.bisect_right(pops[ch], t)
                if count > cfg.token_limit:
                    producer = [i for i in range(stop_pc) if e[i] == t and ch in push_ch[i]][0]
                    events.append((t, ErrorCode.TOKEN_OVERFLOW.value, ErrorCode.TOKEN_OVERFLOW, producer))
                    break
        all_started = all(x is not None for x in s)
        dispatched = [x for x in d if x is not None]
        if next_d == stop_pc and stop_code is not ErrorCode.NONE:
            # the dispatcher reached a bad instruction (or the end): raised when it becomes current
            stop_cycle = dispatch_start if stop_pc == 0 else d[stop_pc - 1] + 1
            events.append((stop_cycle, stop_code.value, stop_code, stop_pc))
        elif next_d == stop_pc and all_started:
            stop_cycle = dispatch_start if stop_pc == 0 else d[stop_pc - 1] + 1
            events.append((max(stop_cycle, last_end + 1), 0, ErrorCode.NONE, stop_pc))
        else:
            quiet = max([x + 1 for x in dispatched] + [x + 1 for x in e if x is not None] + [dispatch_start])
            stuck = next((i for i in range(stop_pc) if s[i] is None), stop_pc)
            events.append((quiet, ErrorCode.DEADLOCK.value, ErrorCode.DEADLOCK, stuck))
        cycle, _, code, pc = min(events)
        status = Status.DONE if code is ErrorCode.NONE else Status.ERROR

        busy = [0, 0, 0]
        for u in (LOAD, COMPUTE, STORE):
            covered = -1
            for i in queues[u]:
                if s[i] is None or s[i] > cycle:
                    break
                lo, hi = max(s[i], covered + 1), min(e[i], cycle)
                if hi >= lo:
                    busy[u] += hi - lo + 1
                covered = max(covered, e[i])
        macs = sum(int(f["k"][i]) for i in range(stop_pc) if unit[i] == COMPUTE) * cfg.rows * cfg.cols
        return RunResult(status, code, cycles=cycle + 1, error_pc=pc if status is Status.ERROR else 0,
                         busy=dict(zip(UNIT_NAMES, busy)), token_stall=dict(zip(UNIT_NAMES, stall)),
                         instructions=stop_pc, gemm_macs=macs if status is Status.DONE else 0)

    # ------------------------------------------------------------------ data

    @staticmethod
    def _read(memory: np.ndarray, addr: int, nbytes: int) -> np.ndarray:
        if addr + nbytes > memory.size:
            raise MemoryModelError(f"read of {nbytes} bytes at {addr:#x} is past the {memory.size}-byte memory model")
        return memory[addr:addr + nbytes]

    def _rows(self, memory: np.ndarray, addr: int, rows: int, word: int, stride: int) -> np.ndarray:
        last = addr + (rows - 1) * stride + word
        if last > memory.size:
            raise MemoryModelError(f"access up to {last:#x} is past the {memory.size}-byte memory model")
        return np.lib.stride_tricks.as_strided(memory[addr:], shape=(rows, word), strides=(stride, 1))

    #: flush pending GEMMs once their operand snapshots hold this many bytes
    BATCH_BYTES = 256 << 20

    def _execute(self, memory: np.ndarray, f: dict[str, np.ndarray], count: int) -> None:
        """Data effects of the first ``count`` instructions, in program order.

        GEMMs are batched: each takes a snapshot of its A and B words when it
        is reached (later LOADs cannot change what it reads) and its MACs are
        computed later, all GEMMs of equal k in one vectorised pass.  Only the
        final accumulator update is order-dependent, and it is applied in
        program order.  A STORE that reads rows a pending GEMM writes forces the
        batch out first.
        """
        cfg = self.cfg
        R = cfg.rows
        pending: list[tuple[int, np.ndarray, np.ndarray, int, bool]] = []
        pending_rows = np.zeros(cfg.acc_depth, dtype=bool)
        pending_bytes = 0

        def flush() -> None:
            nonlocal pending_bytes
            by_k: dict[int, list[int]] = {}
            for idx, item in enumerate(pending):
                by_k.setdefault(item[0], []).append(idx)
            outs: list[np.ndarray | None] = [None] * len(pending)
            for idxs in by_k.values():
                result = numerics.mac_sequence(np.stack([pending[i][1] for i in idxs]),
                                               np.stack([pending[i][2] for i in idxs]))
                for j, i in enumerate(idxs):
                    outs[i] = result[j]
            for (_, _, _, c0, accumulate), out in zip(pending, outs):
                self.acc[c0:c0 + R] = numerics.add_f32(self.acc[c0:c0 + R], out) if accumulate else out
            pending.clear()
            pending_rows[:] = False
            pending_bytes = 0

        for i in range(count):
            op = int(f["opcode"][i])
            if op == Opcode.GEMM.value:
                k, a0, b0, c0 = (int(f[x][i]) for x in ("k", "a_addr", "b_addr", "acc_addr"))
                a_snap, b_snap = self.a[a0:a0 + k].copy(), self.b[b0:b0 + k].copy()
                pending.append((k, a_snap, b_snap, c0, bool(f["accumulate"][i])))
                pending_rows[c0:c0 + R] = True
                pending_bytes += a_snap.nbytes + b_snap.nbytes
                if pending_bytes > self.BATCH_BYTES:
                    flush()
                continue
            buf, sram, rows, addr, stride = (int(f[x][i]) for x in ("buffer", "sram_addr", "rows", "dram_addr", "dram_stride"))
            target = {Buffer.A.value: self.a, Buffer.B.value: self.b, Buffer.ACC.value: self.acc}[buf]
            word = target.shape[1] * target.itemsize
            if op == Opcode.LOAD.value:
                data = self._rows(memory, addr, rows, word, stride)
                target[sram:sram + rows] = np.ascontiguousarray(data).view(target.dtype).reshape(rows, -1)
            else:  # STORE
                if pending_rows[sram:sram + rows].any():
                    flush()
                view = self._rows(memory, addr, rows, word, stride)
                view[:] = target[sram:sram + rows].view(np.uint8).reshape(rows, word)
        flush()
