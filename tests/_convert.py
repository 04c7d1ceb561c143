"""Weight conversions from other frameworks' layouts to fastlstm's (SPEC.md §8), for tests.

fastlstm parameters of one layer/direction: W (I, 4H), U (Hout, 4H), b (4H,), optional
peepholes (3, H) rows (p_i, p_f, p_o) and P (H, Hout); gate blocks (i, f, g, o).
"""

import numpy as np

# destination block k takes source block perm[k]
TF_TO_FASTLSTM = [0, 2, 1, 3]      # TF (i, j, f, o)      -> (i, f, g, o)
ONNX_TO_FASTLSTM = [0, 2, 3, 1]    # ONNX (i, o, f, c)    -> (i, f, g, o)


def blocks(A, perm, axis):
    """Split A into 4 equal blocks along ``axis`` and concatenate them in the order ``perm``."""
    parts = np.split(np.asarray(A), 4, axis=axis)
    return np.concatenate([parts[p] for p in perm], axis=axis)


def from_tf(kernel, bias, forget_bias, input_size, *, w_i_diag=None, w_f_diag=None,
            w_o_diag=None, projection=None):
    """TF1 BasicLSTMCell / LSTMCell variables; ``forget_bias`` is folded into b's f block."""
    kernel = np.asarray(kernel)
    bias = np.array(bias, copy=True)
    H = bias.shape[0] // 4
    bias[2 * H:3 * H] += forget_bias            # the f block in TF order (i, j, f, o)
    params = {
        "W": blocks(kernel[:input_size], TF_TO_FASTLSTM, 1),
        "U": blocks(kernel[input_size:], TF_TO_FASTLSTM, 1),
        "b": blocks(bias, TF_TO_FASTLSTM, 0),
    }
    if w_i_diag is not None:
        params["peepholes"] = np.stack([w_i_diag, w_f_diag, w_o_diag])
    if projection is not None:
        params["P"] = np.asarray(projection)
    return params


def from_keras(kernel, recurrent_kernel, bias):
    """Keras LSTM: already fastlstm's layout."""
    return {"W": np.asarray(kernel), "U": np.asarray(recurrent_kernel), "b": np.asarray(bias)}


def from_torch(weight_ih, weight_hh, bias_ih=None, bias_hh=None, weight_hr=None):
    """torch nn.LSTM parameters of one layer and direction (blocks (i, f, g, o))."""
    weight_ih = np.asarray(weight_ih)
    H = weight_ih.shape[0] // 4
    b = np.zeros(4 * H, weight_ih.dtype)
    if bias_ih is not None:
        b = b + bias_ih
    if bias_hh is not None:
        b = b + bias_hh
    params = {"W": weight_ih.T.copy(), "U": np.asarray(weight_hh).T.copy(), "b": b}
    if weight_hr is not None:
        params["P"] = np.asarray(weight_hr).T.copy()
    return params


def torch_layer(npz, k, reverse=False):
    sfx = f"_l{k}" + ("_reverse" if reverse else "")
    get = (lambda name: npz[name + sfx] if name + sfx in npz.files else None)
    return from_torch(get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"),
                      get("weight_hr"))


def from_onnx(W, R, B=None, P=None, direction=0):
    """ONNX LSTM inputs W [D,4H,I], R [D,4H,H], B [D,8H], P [D,3H] for one direction."""
    Wd = np.asarray(W)[direction]
    H = Wd.shape[0] // 4
    params = {
        "W": blocks(Wd.T, ONNX_TO_FASTLSTM, 1),
        "U": blocks(np.asarray(R)[direction].T, ONNX_TO_FASTLSTM, 1),
    }
    if B is None:
        params["b"] = np.zeros(4 * H, Wd.dtype)
    else:
        Bd = np.asarray(B)[direction]
        params["b"] = blocks(Bd[:4 * H] + Bd[4 * H:], ONNX_TO_FASTLSTM, 0)
    if P is not None:
        pi, po, pf = np.split(np.asarray(P)[direction], 3)
        params["peepholes"] = np.stack([pi, pf, po])
    return params
