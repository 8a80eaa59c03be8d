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
        // Relu: y > 0 exactly where x > 0; reading y lets x be freed
        r.Add("Relu", c => c.SetGI(0, V.Where(c.O(0) > 0, c.G, 0)));
        r.Add("LeakyRelu", c => c.SetGI(0, V.Where(c.I(0) > 0, c.G, c.G * c.GetFloat("alpha", 0.01f))));
        // PRelu: y = x > 0 ? x : slope x
        r.Add("PRelu", c =>
        {
            var (g, x, s) = (c.G, c.I(0), c.I(1));
            var pos = x > 0;
            c.SetBroadcastGI(0, () => V.Where(pos, g, g * s));
            c.SetBroadcastGI(1, () => V.Where(pos, 0, g * x));
        });
        r.Add("Sigmoid", c => c.SetGI(0, c.G * (c.O(0) * (1 - c.O(0)))));
        r.Add("Tanh", c => c.SetGI(0, c.G * (1 - c.O(0) * c.O(0))));
        // Softplus: y = ln(1 + e^x)
        r.Add("Softplus", c => c.SetGI(0, c.G * c.I(0).Sigmoid()));
        // Softsign: y = x / (1 + |x|)
        r.Add("Softsign", c => { var d = 1 + c.I(0).Abs(); c.SetGI(0, c.G / (d * d)); });
        // Elu: y = x > 0 ? x : alpha (e^x - 1)
        r.Add("Elu", c => c.SetGI(0, V.Where(c.I(0) > 0, c.G, c.G * (c.O(0) + c.GetFloat("alpha", 1f)))));
        // Selu: y = gamma (x > 0 ? x : alpha (e^x - 1))
        r.Add("Selu", c =>
        {
            double alpha = c.GetFloat("alpha", 1.67326319217681884765625f), gamma = c.GetFloat("gamma", 1.05070102214813232421875f);
            c.SetGI(0, V.Where(c.I(0) > 0, c.G * gamma, c.G * (c.O(0) + gamma * alpha)));
        });
        // Celu: y = max(0, x) + min(0, alpha (e^(x/alpha) - 1))
        r.Add("Celu", c => c.SetGI(0, V.Where(c.I(0) > 0, c.G, c.G * (c.I(0) / c.GetFloat("alpha", 1f)).Exp())));
        // HardSigmoid: y = clamp(alpha x + beta, 0, 1)
        r.Add("HardSigmoid", c =>
        {
            float alpha = c.GetFloat("alpha", 0.2f);
            var lin = c.I(0) * alpha + c.GetFloat("beta", 0.5f);
            c.SetGI(0, V.Where((lin > 0) & (lin < 1), c.G * alpha, 0));
        });
        // HardSwish: y = x clamp(x/6 + 1/2, 0, 1); PyTorch's derivative: x < -3 ? 0 : x <= 3 ? x/3 + 1/2 : 1
        r.Add("HardSwish", c =>
        {
            var (g, x) = (c.G, c.I(0));
            c.SetGI(0, V.Where(x < -3, 0, V.Where(x <= 3, g * (x / 3 + 0.5), g)));
        });
        r.Add("ThresholdedRelu", c => c.SetGI(0, V.Where(c.I(0) > c.GetFloat("alpha", 1f), c.G, 0)));
        // Clip(x, min?, max?): passes where min <= x <= max (PyTorch's clamp)
        r.Add("Clip", c =>
        {
            var x = c.I(0);
            V? mask = c.Node.HasInput(1) ? x >= c.I(1) : null;
            if (c.Node.HasInput(2)) mask = mask == null ? x <= c.I(2) : mask & (x <= c.I(2));
            c.SetGI(0, mask == null ? c.G : V.Where(mask, c.G, 0));
        }, inputs: [0]);
        // Gelu (ai.onnx opset 20): approximate = "none" | "tanh"
        r.Add("Gelu", c => c.SetGI(0, c.G * c.Node.GetString("approximate", "none") switch
        {
            "none" => GeluExactDerivative(c.I(0)),
            "tanh" => GeluTanhDerivative(c.I(0)),
            var a => throw new CompileException($"{c.Node.Describe()}: Gelu approximate='{a}' is not supported"),
        }));
        // com.microsoft Gelu: exact (erf) form
        r.Add("Gelu", c => c.SetGI(0, c.G * GeluExactDerivative(c.I(0))), domain: MS);
        // com.microsoft FastGelu(X, bias?): y = gelu_tanh(X + bias)
        r.Add("FastGelu", c =>
        {
            var du = c.G * GeluTanhDerivative(c.Node.HasInput(1) ? c.I(0) + c.I(1) : c.I(0));
            c.SetBroadcastGI(0, () => du);
            c.SetBroadcastGI(1, () => du);
        }, domain: MS);
        r.Add("Dropout", Dropout, inputs: [0], outputs: [0]);
    }

    /// <summary>d/dx [x Φ(x)] = Φ(x) + x φ(x) = (1 + erf(x/√2))/2 + x e^(-x²/2)/√(2π).</summary>
    static V GeluExactDerivative(V x)
    {
        var cdf = (1 + (x * (1 / Math.Sqrt(2))).Erf()) * 0.5;
        var pdf = (x * x * -0.5).Exp() * (1 / Math.Sqrt(2 * Math.PI));
        return cdf + x * pdf;
    }

    /// <summary>
    /// y = x (1 + tanh u)/2 with u = √(2/π) (x + 0.044715 x³):
    /// dy/dx = (1 + t)/2 + x (1 - t²)/2 · √(2/π) (1 + 3·0.044715 x²), t = tanh u.
    /// </summary>
    static V GeluTanhDerivative(V x)
    {
        double k = Math.Sqrt(2 / Math.PI);
        var x2 = x * x;
        var t = (x * (1 + x2 * 0.044715) * k).Tanh();
        var du = (1 + x2 * (3 * 0.044715)) * k;
        return (1 + t) * 0.5 + x * 0.5 * (1 - t * t) * du;
    }

    /// <summary>
    /// Dropout: identity in inference mode (training_mode absent or constant false); in training mode
    /// dx = g · mask / (1 - ratio), using the forward node's mask output (added if missing).
    /// A run-time training_mode selects between the two.
    /// </summary>
    static void Dropout(GradientContext c)
    {
        var (g, x) = (c.G, c.I(0));
        var trainingMode = c.ConstantInput(2);
        if (!c.Node.HasInput(2) || trainingMode != null && trainingMode.ToDoubles().All(v => v == 0)) { c.SetGI(0, g); return; }
        var mask = c.EnsureOutput(1, "mask", c.Graph.TypeOf(x) is { } xt ? xt with { ElemType = DataType.Bool } : null);
        V scale;
        if (!c.Node.HasInput(1)) scale = x.Const(2); // default ratio 0.5
        else if (c.ConstantInput(1) is { } rc)
        {
            double ratio = rc.ToDoubles()[0];
            if (ratio >= 1) { c.SetGI(0, g * 0); return; }
            scale = x.Const(1 / (1 - ratio));
        }
        else scale = (1 - c.I(1).CastLike(x)).Reciprocal();
        var dx = g * mask.CastLike(x) * scale;
        c.SetGI(0, trainingMode != null ? dx : V.Where(c.I(2), dx, g));
    }
}
