"""Every Prometheus metric of the process, named in one place."""

import time

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5)

TTFA = Histogram("tts_ttfa_seconds", "Request received to first audio frame sent", ["engine"], buckets=_LATENCY_BUCKETS)
INTERRUPT_LATENCY = Histogram(
    "tts_interrupt_latency_seconds", "Interrupt received to last audio frame of the utterance sent", buckets=_LATENCY_BUCKETS
)
UTTERANCES = Counter("tts_utterances_total", "Utterances by outcome", ["outcome"])
QUEUE_DEPTH = Gauge("tts_queue_depth", "Utterances waiting in all rooms")
ROOMS = Gauge("tts_rooms", "Open rooms")
PEERS = Gauge("tts_peers", "Connected peers")
FRAMES_SENT = Counter("tts_frames_sent_total", "20 ms audio frames sent (once per room, not per peer)")
FRAMES_LATE = Counter("tts_frames_late_total", "Frames sent more than 5 ms after their slot")
# Read in the same pass as the counters: frames sent between two scrapes over the time between
# them, exact even when a loaded process takes long to answer a scrape
MONOTONIC = Gauge("tts_monotonic_seconds", "The process's monotonic clock when these metrics were read")
MONOTONIC.set_function(time.monotonic)
DROPPED = Counter("tts_dropped_total", "Utterances dropped by danmu rules", ["reason"])
CACHE = Counter("tts_cache_total", "PCM cache lookups", ["result"])
SYNTH_RTF = Histogram(
    "tts_synthesis_rtf", "Synthesis time / audio duration per utterance", ["engine"],
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
)
ERRORS = Counter("tts_errors_total", "Error events sent, by code", ["code"])
_TICK_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.02, 0.05)
TICK_LAG = Histogram("tts_clock_tick_lag_seconds", "Frame clock tick start after its deadline (loop congestion)",
                     buckets=_TICK_BUCKETS)
GC_PAUSE = Histogram("tts_gc_pause_seconds", "Garbage collector passes (the loop stands still meanwhile)",
                     ["generation"], buckets=_TICK_BUCKETS)
TICK_WORK = Histogram("tts_clock_tick_seconds", "Time one frame clock tick spends framing, encoding and sending",
                      buckets=_TICK_BUCKETS)
