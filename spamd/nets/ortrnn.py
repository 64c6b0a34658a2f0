"""A trained TextRNN's packed forward pass with the GRU run by onnxruntime: the same numbers, the
recurrence several times cheaper on a CPU.

A GRU step at the scorer's batch sizes is a tiny product and a few gates. torch runs each step as
a dozen operator calls, about 12 µs a step on the README's box, nearly all of it call overhead;
onnxruntime's GRU kernel runs a whole sequence in one call, about 1.5 µs a step (bench/README.md, "The
RNN's GRU in onnxruntime"). Only the recurrence moves: the embedding, the strided fold before it and the pooling
after it stay TextRNN's own torch code. The ONNX graph is one GRU node built from the torch
weights when the model is loaded (nothing is stored, nothing is exported at training time), with
`linear_before_reset = 1`, which is torch's formula for the candidate state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from spamd.nets.rnn import TextRNN

if TYPE_CHECKING:
    import onnx

# onnx and onnxruntime (about 40 MB of memory) are imported where a model is built, so that a
# process that never scores (the supervisor of several workers, most of the CLI) does not load them.

OPSET = 14


class OrtRNN:
    """`TextRNN.forward(packed=True)` for inference, its GRU run by onnxruntime on one thread.
    Each message is read on its own, to its own end in both directions, so a score never depends
    on its batch-mates. Equal to the torch pass up to float rounding (tested)."""

    def __init__(self, rnn: TextRNN) -> None:
        import onnxruntime as ort

        self.rnn = rnn
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # spamd sets its threads on purpose
        self.session = ort.InferenceSession(gru_model(rnn.gru).SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) int64, right-padded with 0 → logits (B,).

        The GRU reads one message at a time: onnxruntime steps a whole batch as far as its
        longest message, so a batch costs more than its messages one by one (README)."""
        x, steps = self.rnn.steps(ids)  # (B, T/s, H), (B,)
        logits = []
        for row, n in zip(x, steps.tolist(), strict=True):
            feed = {"X": row[None, :n].contiguous().numpy(), "sequence_lens": np.array([n], dtype=np.int32)}
            (y,) = self.session.run(None, feed)  # (1, n, dirs, H)
            h = torch.from_numpy(y).flatten(2)  # (1, n, H·dirs): forward units, then backward, as torch's
            logits.append(self.rnn.pool(h, steps.new_tensor([n])))
        return torch.cat(logits)


def gru_model(gru: nn.GRU) -> onnx.ModelProto:
    """One ONNX GRU node with `gru`'s weights (one layer, batch_first), batch-major in and out."""
    from onnx import TensorProto, helper, numpy_helper

    if gru.num_layers != 1 or not gru.batch_first or not gru.bias:
        raise ValueError("OrtRNN takes a one-layer, batch_first GRU with biases (as TextRNN builds)")
    h = gru.hidden_size
    suffixes = ["", "_reverse"] if gru.bidirectional else [""]

    def stacked(kind: str) -> np.ndarray:
        return np.stack([_zrh(getattr(gru, f"{kind}_l0{s}")) for s in suffixes])

    inits = [
        numpy_helper.from_array(stacked("weight_ih"), "W"),  # (dirs, 3H, I)
        numpy_helper.from_array(stacked("weight_hh"), "R"),  # (dirs, 3H, H)
        numpy_helper.from_array(np.concatenate([stacked("bias_ih"), stacked("bias_hh")], axis=1), "B"),  # (dirs, 6H)
    ]
    # onnxruntime's GRU takes time-major tensors only (`layout = 0`): the graph turns torch's
    # batch-major ones around on either side of it.
    nodes = [
        helper.make_node("Transpose", ["X"], ["X_tbi"], perm=[1, 0, 2]),  # (B, T, I) → (T, B, I)
        helper.make_node("GRU", ["X_tbi", "W", "R", "B", "sequence_lens"], ["Y_tdbh"], hidden_size=h,
                         linear_before_reset=1, direction="bidirectional" if gru.bidirectional else "forward"),
        helper.make_node("Transpose", ["Y_tdbh"], ["Y"], perm=[2, 0, 1, 3]),  # (T, dirs, B, H) → (B, T, dirs, H)
    ]
    graph = helper.make_graph(
        nodes, "gru",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["B", "T", gru.input_size]),
         helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, ["B"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["B", "T", len(suffixes), h])],
        inits)
    # Stamped with the oldest IR version that the opset needs, not the onnx package's own: an onnx
    # newer than the onnxruntime beside it writes an IR version that runtime refuses (onnx 1.23
    # writes 14; onnxruntime 1.30 reads up to 13), and the GRU would fall back to torch's, slower.
    opsets = [helper.make_opsetid("", OPSET)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


def _zrh(param: torch.Tensor) -> np.ndarray:
    """torch stacks a GRU's gates as (reset, update, new); ONNX as (update, reset, hidden)."""
    r, z, n = param.detach().float().numpy().reshape(3, -1, *param.shape[1:])
    return np.concatenate([z, r, n])
