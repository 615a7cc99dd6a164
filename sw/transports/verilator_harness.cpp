// The Verilated core as an emulated device: a C API (loaded with ctypes by nmsat.sw.transports.verilator)
// over one nmsat_core model, the memory model of docs/architecture.md section 6 on both AXI4 master ports
// (every address accepted; read data mem_read_latency cycles after the address, one beat per cycle, in
// order, the data taken when the address is accepted; a write response mem_write_latency cycles after a
// burst's last beat; DECERR for a beat past the end of memory), and AXI4-Lite register transactions, all in
// C++: Python is called per register access or wait, never per cycle.
//
// Compiled with -DBUS_BYTES=<the config's bus width in bytes>.  Amaranth names ports `csr__awaddr`;
// Verilator escapes the double underscore, so the C++ members read `csr___05Fawaddr`.

#include <atomic>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "Vnmsat_core.h"
#include "verilated.h"

#ifndef BUS_BYTES
#error "BUS_BYTES must be defined"
#endif

namespace {

constexpr int DECERR = 3;

// bus-wide data to and from Verilator's types: integers up to 64 bits, VlWide beyond
template <typename T>
void put(T& dst, const uint8_t* src) {
    uint64_t v = 0;
    std::memcpy(&v, src, BUS_BYTES < 8 ? BUS_BYTES : 8);
    dst = static_cast<T>(v);
}
template <std::size_t N>
void put(VlWide<N>& dst, const uint8_t* src) {
    for (std::size_t i = 0; i < N; i++) {
        uint32_t w;
        std::memcpy(&w, src + 4 * i, 4);
        dst[i] = w;
    }
}
template <typename T>
void get(const T& src, uint8_t* dst) {
    uint64_t v = static_cast<uint64_t>(src);
    std::memcpy(dst, &v, BUS_BYTES < 8 ? BUS_BYTES : 8);
}
template <std::size_t N>
void get(const VlWide<N>& src, uint8_t* dst) {
    for (std::size_t i = 0; i < N; i++) {
        uint32_t w = src[i];
        std::memcpy(dst + 4 * i, &w, 4);
    }
}

struct ReadBeat {
    uint64_t time;
    bool last;
    int resp;
    uint8_t data[BUS_BYTES];
};

struct WriteBurst {
    uint64_t addr;
    uint64_t beats;
    int resp;
};

struct Port {
    std::deque<ReadBeat> r;
    uint64_t r_free = 0;
    bool presented = false;
    std::deque<WriteBurst> aw;
    std::deque<std::pair<uint64_t, int>> b;
};

// One context for every device of the process, never destroyed: Verilator keeps a per-thread pointer to
// the last context made, so deleting one context while another lived left that pointer dangling and
// deleting the next model hung or crashed.  The models are named apart within it.
VerilatedContext* shared_context() {
    static VerilatedContext* context = new VerilatedContext;
    return context;
}

struct Device {
    std::unique_ptr<Vnmsat_core> top;
    std::vector<uint8_t> memory;
    uint64_t limit;  // a beat reaching past this gets DECERR
    uint64_t read_latency, write_latency;
    uint64_t cycle = 0;
    Port ports[2];
};

// one port of the memory model: this cycle's responses (before the core settles) ...
#define DRIVE(P, port)                                                                              \
    do {                                                                                            \
        Port& s = d.ports[port];                                                                    \
        s.presented = !s.r.empty() && s.r.front().time <= d.cycle;                                  \
        t.P##___05Farready = 1;                                                                         \
        t.P##___05Fawready = 1;                                                                         \
        t.P##___05Fwready = 1;                                                                          \
        if (s.presented) {                                                                          \
            const ReadBeat& beat = s.r.front();                                                     \
            t.P##___05Frvalid = 1;                                                                      \
            put(t.P##___05Frdata, beat.data);                                                           \
            t.P##___05Frlast = beat.last;                                                               \
            t.P##___05Frresp = beat.resp;                                                               \
        } else {                                                                                    \
            t.P##___05Frvalid = 0;                                                                      \
        }                                                                                           \
        bool respond = !s.b.empty() && s.b.front().first == d.cycle;                                \
        t.P##___05Fbvalid = respond;                                                                    \
        if (respond) {                                                                              \
            t.P##___05Fbresp = s.b.front().second;                                                      \
            s.b.pop_front();                                                                        \
        }                                                                                           \
    } while (0)

// ... and its requests (settled)
#define SAMPLE(P, port)                                                                             \
    do {                                                                                            \
        Port& s = d.ports[port];                                                                    \
        if (s.presented && t.P##___05Frready) s.r.pop_front();                                          \
        if (t.P##___05Farvalid) {                                                                       \
            uint64_t addr = t.P##___05Faraddr, beats = uint64_t(t.P##___05Farlen) + 1;                      \
            uint64_t first = d.cycle + d.read_latency;                                              \
            if (s.r_free > first) first = s.r_free;                                                 \
            for (uint64_t i = 0; i < beats; i++) {                                                  \
                ReadBeat beat;                                                                      \
                uint64_t a = addr + i * BUS_BYTES;                                                  \
                beat.time = first + i;                                                              \
                beat.last = i == beats - 1;                                                         \
                if (a + BUS_BYTES <= d.limit) {                                                     \
                    std::memcpy(beat.data, &d.memory[a], BUS_BYTES);                                \
                    beat.resp = 0;                                                                  \
                } else {                                                                            \
                    std::memset(beat.data, 0, BUS_BYTES);                                           \
                    beat.resp = DECERR;                                                             \
                }                                                                                   \
                s.r.push_back(beat);                                                                \
            }                                                                                       \
            s.r_free = first + beats;                                                               \
        }                                                                                           \
        if (t.P##___05Fawvalid) s.aw.push_back({uint64_t(t.P##___05Fawaddr), uint64_t(t.P##___05Fawlen) + 1, 0}); \
        if (t.P##___05Fwvalid && !s.aw.empty()) {                                                       \
            WriteBurst& burst = s.aw.front();                                                       \
            if (burst.addr + BUS_BYTES <= d.limit) {                                                \
                get(t.P##___05Fwdata, &d.memory[burst.addr]);                                           \
            } else {                                                                                \
                burst.resp = DECERR;                                                                \
            }                                                                                       \
            burst.addr += BUS_BYTES;                                                                \
            burst.beats -= 1;                                                                       \
            if (burst.beats == 0) {                                                                 \
                s.b.push_back({d.cycle + d.write_latency, burst.resp});                             \
                s.aw.pop_front();                                                                   \
            }                                                                                       \
        }                                                                                           \
    } while (0)

// one clock cycle: the memory's responses, the core settles (the falling edge and the new inputs in one
// evaluation: the core uses only the rising edge), the requests are taken, the rising edge
void step(Device& d) {
    Vnmsat_core& t = *d.top;
    DRIVE(mem, 0);
    DRIVE(spmem, 1);
    t.clk = 0;
    t.eval();
    SAMPLE(mem, 0);
    SAMPLE(spmem, 1);
    t.clk = 1;
    t.eval();
    d.cycle++;
}

}  // namespace

extern "C" {

void* nm_create(uint64_t memory_size, uint64_t read_latency, uint64_t write_latency) {
    Device* d = new Device;
    static std::atomic<uint64_t> made{0};  // ctypes drops the GIL: devices may be made from two threads
    std::string name = "nmsat_device_" + std::to_string(made.fetch_add(1));
    d->top.reset(new Vnmsat_core(shared_context(), name.c_str()));
    d->memory.assign(memory_size, 0);
    d->limit = memory_size / BUS_BYTES * BUS_BYTES;
    d->read_latency = read_latency;
    d->write_latency = write_latency;
    Vnmsat_core& t = *d->top;
    t.clk = 0;
    t.rst = 1;
    for (int i = 0; i < 4; i++) step(*d);
    t.rst = 0;
    step(*d);
    return d;
}

void nm_destroy(void* handle) { delete static_cast<Device*>(handle); }

// a memory of another size (zeros; DECERR past it), the core and its buffers as they are
void nm_resize(void* handle, uint64_t memory_size) {
    Device& d = *static_cast<Device*>(handle);
    d.memory.assign(memory_size, 0);
    d.limit = memory_size / BUS_BYTES * BUS_BYTES;
}

uint8_t* nm_memory(void* handle) { return static_cast<Device*>(handle)->memory.data(); }

uint64_t nm_cycle(void* handle) { return static_cast<Device*>(handle)->cycle; }

int nm_bus_bytes() { return BUS_BYTES; }

void nm_wait(void* handle, uint64_t cycles) {
    Device& d = *static_cast<Device*>(handle);
    for (uint64_t i = 0; i < cycles; i++) step(d);
}

// AXI4-Lite, one transaction at a time, as a host would; a bound on the cycles keeps a broken slave from
// hanging the caller (returns nonzero then)
int nm_reg_write(void* handle, uint32_t offset, uint32_t value) {
    Device& d = *static_cast<Device*>(handle);
    Vnmsat_core& t = *d.top;
    t.csr___05Fawaddr = offset;
    t.csr___05Fawprot = 0;
    t.csr___05Fwdata = value;
    t.csr___05Fwstrb = 0xF;
    t.csr___05Fawvalid = 1;
    t.csr___05Fwvalid = 1;
    t.csr___05Fbready = 1;
    int guard = 0;
    for (;;) {
        t.eval();
        bool ready = t.csr___05Fawready && t.csr___05Fwready;
        step(d);
        if (ready) break;
        if (++guard > 1000) return 1;
    }
    t.csr___05Fawvalid = 0;
    t.csr___05Fwvalid = 0;
    for (;;) {
        t.eval();
        bool done = t.csr___05Fbvalid;
        step(d);
        if (done) break;
        if (++guard > 2000) return 1;
    }
    t.csr___05Fbready = 0;
    return 0;
}

int nm_reg_read(void* handle, uint32_t offset, uint32_t* value) {
    Device& d = *static_cast<Device*>(handle);
    Vnmsat_core& t = *d.top;
    t.csr___05Faraddr = offset;
    t.csr___05Farprot = 0;
    t.csr___05Farvalid = 1;
    t.csr___05Frready = 1;
    int guard = 0;
    for (;;) {
        t.eval();
        bool ready = t.csr___05Farready;
        step(d);
        if (ready) break;
        if (++guard > 1000) return 1;
    }
    t.csr___05Farvalid = 0;
    for (;;) {
        t.eval();
        if (t.csr___05Frvalid) {
            *value = t.csr___05Frdata;
            step(d);
            break;
        }
        step(d);
        if (++guard > 2000) return 1;
    }
    t.csr___05Frready = 0;
    return 0;
}

}  // extern "C"
