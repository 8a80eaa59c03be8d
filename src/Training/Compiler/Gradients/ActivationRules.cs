using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Autodiff;

namespace OrtFinetune.Training.Compiler.Gradients;

/// <summary>
/// Pointwise activations (Relu family, sigmoids, GELU, Clip, ...) and Dropout. Each input gradient
/// is the output gradient times the local derivative, written with forward values (x or y).
/// Derivatives at kinks follow PyTorch (Relu: 0 at x = 0; Clip: passes on the closed interval).
/// </summary>
public static class ActivationRules
{
    const string MS = "com.microsoft";

    public static void Register(GradientRegistry r)
    {
        // Relu: dx = y > 0 ? g : 0 (y > 0 exactly where x > 0; reading y lets x be freed)
        r.Add("Relu", c => c.SetGI(0, c.B.Where(c.B.Op("Greater", [c.O(0), c.ScalarLike(0, c.I(0))]), c.GO(0)!, c.ScalarLike(0, c.I(0)))));
        // LeakyRelu: dx = x > 0 ? g : alpha * g
        r.Add("LeakyRelu", c =>
        {
            var g = c.GO(0)!;
            c.SetGI(0, c.B.Where(Positive(c), g, c.B.Mul(g, c.ScalarLike(c.GetFloat("alpha", 0.01f), c.I(0)))));
        });
        // PRelu: y = x > 0 ? x : slope * x; dx = x > 0 ? g : slope * g; dslope = unbroadcast(x <= 0 ? g * x : 0)
        r.Add("PRelu", c =>
        {
            var (g, x, s) = (c.GO(0)!, c.I(0), c.I(1));
            var pos = Positive(c);
            var zero = c.ScalarLike(0, x);
            if (c.Need(0)) c.SetGI(0, c.Unbroadcast(c.B.Where(pos, g, c.B.Mul(g, s)), x));
            if (c.Need(1)) c.SetGI(1, c.Unbroadcast(c.B.Where(pos, zero, c.B.Mul(g, x)), s));
        });
        // Sigmoid: dx = g * y * (1 - y)
        r.Add("Sigmoid", c =>
        {
            var y = c.O(0);
            c.SetGI(0, c.B.Mul(c.GO(0)!, c.B.Mul(y, c.B.Sub(c.ScalarLike(1, y), y))));
        });
        // Tanh: dx = g * (1 - y^2)
        r.Add("Tanh", c =>
        {
            var y = c.O(0);
            c.SetGI(0, c.B.Mul(c.GO(0)!, c.B.Sub(c.ScalarLike(1, y), c.B.Mul(y, y))));
        });
        // Softplus: y = ln(1 + e^x); dx = g * sigmoid(x)
        r.Add("Softplus", c => c.SetGI(0, c.B.Mul(c.GO(0)!, c.B.Op("Sigmoid", [c.I(0)]))));
        // Softsign: y = x / (1 + |x|); dx = g / (1 + |x|)^2
        r.Add("Softsign", c =>
        {
            var d = c.B.Add(c.ScalarLike(1, c.I(0)), c.B.Op("Abs", [c.I(0)]));
            c.SetGI(0, c.B.Div(c.GO(0)!, c.B.Mul(d, d)));
        });
        // Elu: y = x > 0 ? x : alpha (e^x - 1); dx = x > 0 ? g : g * (y + alpha)
        r.Add("Elu", c =>
        {
            var g = c.GO(0)!;
            var alpha = c.ScalarLike(c.GetFloat("alpha", 1f), c.I(0));
            c.SetGI(0, c.B.Where(Positive(c), g, c.B.Mul(g, c.B.Add(c.O(0), alpha))));
        });
        // Selu: y = gamma * (x > 0 ? x : alpha (e^x - 1)); dx = x > 0 ? gamma g : g * (y + gamma alpha)
        r.Add("Selu", c =>
        {
            var g = c.GO(0)!;
            double alpha = c.GetFloat("alpha", 1.67326319217681884765625f), gamma = c.GetFloat("gamma", 1.05070102214813232421875f);
            var neg = c.B.Mul(g, c.B.Add(c.O(0), c.ScalarLike(gamma * alpha, c.I(0))));
            c.SetGI(0, c.B.Where(Positive(c), c.B.Mul(g, c.ScalarLike(gamma, c.I(0))), neg));
        });
        // Celu: y = max(0,x) + min(0, alpha (e^(x/alpha) - 1)); dx = x > 0 ? g : g * e^(x/alpha)
        r.Add("Celu", c =>
        {
            var (g, x) = (c.GO(0)!, c.I(0));
            var e = c.B.Op("Exp", [c.B.Div(x, c.ScalarLike(c.GetFloat("alpha", 1f), x))]);
            c.SetGI(0, c.B.Where(Positive(c), g, c.B.Mul(g, e)));
        });
        // HardSigmoid: y = clamp(alpha x + beta, 0, 1); dx = 0 < alpha x + beta < 1 ? alpha g : 0
        r.Add("HardSigmoid", c =>
        {
            var x = c.I(0);
            var lin = c.B.Add(c.B.Mul(x, c.ScalarLike(c.GetFloat("alpha", 0.2f), x)), c.ScalarLike(c.GetFloat("beta", 0.5f), x));
            var inside = c.B.Op("And", [c.B.Op("Greater", [lin, c.ScalarLike(0, x)]), c.B.Op("Less", [lin, c.ScalarLike(1, x)])]);
            c.SetGI(0, c.B.Where(inside, c.B.Mul(c.GO(0)!, c.ScalarLike(c.GetFloat("alpha", 0.2f), x)), c.ScalarLike(0, x)));
        });
        // HardSwish: y = x * clamp(x/6 + 1/2, 0, 1); dx = x < -3 ? 0 : x <= 3 ? g (x/3 + 1/2) : g  (PyTorch)
        r.Add("HardSwish", c =>
        {
            var (g, x) = (c.GO(0)!, c.I(0));
            var mid = c.B.Mul(g, c.B.Add(c.B.Div(x, c.ScalarLike(3, x)), c.ScalarLike(0.5, x)));
            var upper = c.B.Where(c.B.Op("LessOrEqual", [x, c.ScalarLike(3, x)]), mid, g);
            c.SetGI(0, c.B.Where(c.B.Op("Less", [x, c.ScalarLike(-3, x)]), c.ScalarLike(0, x), upper));
        });
        // ThresholdedRelu: y = x > alpha ? x : 0; dx = x > alpha ? g : 0
        r.Add("ThresholdedRelu", c =>
        {
            var x = c.I(0);
            var above = c.B.Op("Greater", [x, c.ScalarLike(c.GetFloat("alpha", 1f), x)]);
            c.SetGI(0, c.B.Where(above, c.GO(0)!, c.ScalarLike(0, x)));
        });
        r.Add("Clip", Clip, inputs: [0]);
        // Gelu (ai.onnx opset 20): approximate = "none" | "tanh"
        r.Add("Gelu", c =>
        {
            var approx = c.Node.GetString("approximate", "none");
            var d = approx switch
            {
                "none" => GeluExactDerivative(c, c.I(0)),
                "tanh" => GeluTanhDerivative(c, c.I(0)),
                _ => throw new CompileException($"{c.Node.Describe()}: Gelu approximate='{approx}' is not supported"),
            };
            c.SetGI(0, c.B.Mul(c.GO(0)!, d));
        });
        // com.microsoft Gelu: exact (erf) form
        r.Add("Gelu", c => c.SetGI(0, c.B.Mul(c.GO(0)!, GeluExactDerivative(c, c.I(0)))), domain: MS);
        // com.microsoft FastGelu(X, bias?): y = gelu_tanh(X + bias); dX = g * gelu_tanh'(X + bias); dbias = unbroadcast(dX)
        r.Add("FastGelu", c =>
        {
            var u = c.Node.HasInput(1) ? c.B.Add(c.I(0), c.I(1)) : c.I(0);
            var du = c.B.Mul(c.GO(0)!, GeluTanhDerivative(c, u));
            if (c.Need(0)) c.SetGI(0, c.Unbroadcast(du, c.I(0)));
            if (c.Need(1)) c.SetGI(1, c.Unbroadcast(du, c.I(1)));
        }, domain: MS);
        r.Add("Dropout", Dropout, inputs: [0], outputs: [0]);
    }

    static string Positive(GradientContext c) => c.B.Op("Greater", [c.I(0), c.ScalarLike(0, c.I(0))]);

    /// <summary>d/dx [x Φ(x)] = Φ(x) + x φ(x) = (1 + erf(x/√2))/2 + x e^(-x²/2)/√(2π).</summary>
    static string GeluExactDerivative(GradientContext c, string x)
    {
        var b = c.B;
        var cdf = b.Mul(b.Add(c.ScalarLike(1, c.I(0)), b.Op("Erf", [b.Mul(x, c.ScalarLike(1 / Math.Sqrt(2), c.I(0)))])), c.ScalarLike(0.5, c.I(0)));
        var pdf = b.Mul(b.Op("Exp", [b.Mul(b.Mul(x, x), c.ScalarLike(-0.5, c.I(0)))]), c.ScalarLike(1 / Math.Sqrt(2 * Math.PI), c.I(0)));
        return b.Add(cdf, b.Mul(x, pdf));
    }

    /// <summary>
    /// y = x (1 + tanh u)/2 with u = √(2/π) (x + 0.044715 x³):
    /// dy/dx = (1 + t)/2 + x (1 - t²)/2 · √(2/π) (1 + 3·0.044715 x²), t = tanh u.
    /// </summary>
    static string GeluTanhDerivative(GradientContext c, string x)
    {
        var b = c.B;
        string S(double v) => c.ScalarLike(v, c.I(0));
        double k = Math.Sqrt(2 / Math.PI);
        var x2 = b.Mul(x, x);
        var u = b.Mul(b.Mul(x, b.Add(S(1), b.Mul(x2, S(0.044715)))), S(k));
        var t = b.Op("Tanh", [u]);
        var du = b.Mul(b.Add(S(1), b.Mul(x2, S(3 * 0.044715))), S(k));
        var left = b.Mul(b.Add(S(1), t), S(0.5));
        var right = b.Mul(b.Mul(b.Mul(x, S(0.5)), b.Sub(S(1), b.Mul(t, t))), du);
        return b.Add(left, right);
    }

    /// <summary>
    /// Clip(x, min?, max?): dx = g where min &lt;= x &lt;= max (PyTorch's clamp rule), else 0.
    /// Bounds come from inputs 1, 2 (opset 11+) or the min/max attributes (older opsets).
    /// </summary>
    static void Clip(GradientContext c)
    {
        var (g, x) = (c.GO(0)!, c.I(0));
        string? lo = null, hi = null;
        if (c.Opset >= 11)
        {
            if (c.Node.HasInput(1)) lo = c.I(1);
            if (c.Node.HasInput(2)) hi = c.I(2);
        }
        else
        {
            if (c.Node.Attr("min") is { } mn) lo = c.ScalarLike(mn.F, x);
            if (c.Node.Attr("max") is { } mx) hi = c.ScalarLike(mx.F, x);
        }
        string? mask = null;
        // GreaterOrEqual/LessOrEqual exist from opset 12; Not(Less)/Not(Greater) before that.
        if (lo != null) mask = c.Opset >= 12 ? c.B.Op("GreaterOrEqual", [x, lo]) : c.B.Op("Not", [c.B.Op("Less", [x, lo])]);
        if (hi != null)
        {
            var m = c.Opset >= 12 ? c.B.Op("LessOrEqual", [x, hi]) : c.B.Op("Not", [c.B.Op("Greater", [x, hi])]);
            mask = mask == null ? m : c.B.Op("And", [mask, m]);
        }
        c.SetGI(0, mask == null ? g : c.B.Where(mask, g, c.ScalarLike(0, x)));
    }

    /// <summary>
    /// Dropout: identity in inference mode (opset &lt; 12, or training_mode absent or constant false);
    /// in training mode dx = g · mask / (1 - ratio), using the forward node's mask output (added if
    /// missing). A run-time training_mode selects between the two.
    /// </summary>
    static void Dropout(GradientContext c)
    {
        var g = c.GO(0)!;
        var x = c.I(0);
        if (c.Opset < 12 || !c.Node.HasInput(2)) { c.SetGI(0, g); return; }
        var tmConst = c.ConstantInput(2);
        if (tmConst != null && tmConst.ToDoubles().All(v => v == 0)) { c.SetGI(0, g); return; }

        var t = c.ElemType(x);
        var mask = c.EnsureOutput(1, "mask", c.Graph.TypeOf(x) is { } xt ? xt with { ElemType = DataType.Bool } : null);
        string scale;
        if (!c.Node.HasInput(1)) scale = c.ScalarLike(2, x); // default ratio 0.5
        else if (c.ConstantInput(1) is { } rc)
        {
            double ratio = rc.ToDoubles()[0];
            if (ratio >= 1) { c.SetGI(0, c.B.Mul(g, c.ScalarLike(0, x))); return; }
            scale = c.ScalarLike(1 / (1 - ratio), x);
        }
        else
        {
            var ratio = c.ElemType(c.I(1)) == t ? c.I(1) : c.B.Cast(c.I(1), t);
            scale = c.B.Op("Reciprocal", [c.B.Sub(c.ScalarLike(1, x), ratio)]);
        }
        var dx = c.B.Mul(c.B.Mul(g, c.B.Cast(mask, t)), scale);
        c.SetGI(0, tmConst != null ? dx : c.B.Where(c.I(2), dx, g));
    }
}
