"""llama.cpp's own process: loads a GGUF, decodes one token per call, times each call itself.

Run by qbench/backends/llamacpp.py as `python llamacpp_engine.py` (a fresh interpreter that never imports
torch: in one process with a CUDA build of torch, llama.cpp's CUDA build crashes while loading a
model, measured on the H100 with torch 2.11+cu130 and llama-cpp-python 0.3.36; both carry their
own instances of the C++ standard library's templates). It imports only the standard library,
numpy and llama_cpp.

Protocol: length-prefixed pickles, requests on stdin, replies on stdout (the engine's own prints go
to stderr). A reply is ("ok", ...) or ("error", message).
  ("load", path, n_ctx, n_batch, gpu, threads) -> ("ok", {"vocab": V, "log": [...]})
  ("prefill", [ids])  -> ("ok", logits bytes)             the cache is cleared first
  ("step", id)        -> ("ok", seconds, logits bytes)    seconds: perf_counter around llama_decode
                                                          and the copy of the logits it hands back
  ("score", [ids])    -> ("ok", logits bytes [T x V])     every position, from position 0
  ("quit",)
`python llamacpp_engine.py quantize SRC DST FTYPE THREADS REQUANTIZE` runs llama.cpp's quantiser.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import struct
import sys
import time


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def read_message(stream):
    head = stream.read(8)
    if len(head) < 8:
        return None
    (size,) = struct.unpack("<Q", head)
    return pickle.loads(stream.read(size))


def write_message(stream, message) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


class Engine:
    def __init__(self):
        import llama_cpp

        self.lib = llama_cpp
        self.log: list[str] = []
        self._callback = llama_cpp.llama_log_callback(self._keep_log)  # referenced: ctypes must not free it
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()

    def _keep_log(self, level, text, user_data) -> None:
        line = text.decode(errors="replace").rstrip()
        if line:
            self.log.append(line)
            del self.log[:-400]

    def load(self, path: str, n_ctx: int, n_batch: int, gpu: bool, threads: int) -> dict:
        lib = self.lib
        if gpu and not lib.llama_supports_gpu_offload():
            raise RuntimeError(
                "this llama-cpp-python was built without GPU support: reinstall it with "
                "CMAKE_ARGS='-DGGML_CUDA=on' pip install --no-binary llama-cpp-python llama-cpp-python"
            )
        model_params = lib.llama_model_default_params()
        model_params.n_gpu_layers = 10**6 if gpu else 0  # every layer on the GPU
        self.model = lib.llama_model_load_from_file(path.encode(), model_params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}: {' | '.join(self.log[-3:])}")
        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = n_batch
        params.n_threads = params.n_threads_batch = threads
        self.ctx = lib.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context: {' | '.join(self.log[-3:])}")
        self.vocab = lib.llama_vocab_n_tokens(lib.llama_model_get_vocab(self.model))
        self.batch = lib.llama_batch_init(n_batch, 0, 1)
        self.n_batch = n_batch
        return {"vocab": self.vocab, "log": list(self.log)}

    def _decode(self, tokens: list[int], start: int, all_logits: bool) -> None:
        batch = self.batch
        for i, token in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = start + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = all_logits or i == len(tokens) - 1
        batch.n_tokens = len(tokens)
        status = self.lib.llama_decode(self.ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}: {' | '.join(self.log[-3:])}")

    def _logits(self, index: int) -> bytes:
        pointer = self.lib.llama_get_logits_ith(self.ctx, index)  # synchronises with the device
        return ctypes.string_at(pointer, self.vocab * 4)

    def restart(self) -> None:
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)

    def prefill(self, ids: list[int]) -> bytes:
        self.restart()
        for start in range(0, len(ids), self.n_batch):
            self._decode(ids[start : start + self.n_batch], start, all_logits=False)
        self.position = len(ids)
        return self._logits(-1)

    def step(self, token: int) -> tuple[float, bytes]:
        began = time.perf_counter()
        self._decode([token], self.position, all_logits=False)
        logits = self._logits(-1)
        elapsed = time.perf_counter() - began
        self.position += 1
        return elapsed, logits

    def score(self, ids: list[int]) -> bytes:
        ids = ids[: self.n_batch]
        self.restart()
        self._decode(ids, 0, all_logits=True)
        return b"".join(self._logits(i) for i in range(len(ids)))


def serve() -> None:
    requests = sys.stdin.buffer
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed from here on lands on stderr, never in the replies
    engine = None
    while True:
        message = read_message(requests)
        if message is None or message[0] == "quit":
            return
        try:
            if engine is None:
                engine = Engine()
            command, *args = message
            if command == "load":
                reply = ("ok", engine.load(*args))
            elif command == "prefill":
                reply = ("ok", engine.prefill(args[0]))
            elif command == "step":
                reply = ("ok", *engine.step(args[0]))
            elif command == "score":
                reply = ("ok", engine.score(args[0]))
            else:
                reply = ("error", f"unknown command {command!r}")
        except Exception as error:  # the session reports it; the engine stays up for the next request
            reply = ("error", f"{type(error).__name__}: {error}"[:1000])
        write_message(replies, reply)


def quantize(source: str, target: str, ftype: int, threads: int, requantize: bool) -> int:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    params.allow_requantize = requantize
    return llama_cpp.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params))


if __name__ == "__main__":
    _die_with_parent()
    if sys.argv[1:2] == ["quantize"]:
        source, target, ftype, threads, requantize = sys.argv[2:7]
        sys.exit(quantize(source, target, int(ftype), int(threads), requantize == "1"))
    serve()
