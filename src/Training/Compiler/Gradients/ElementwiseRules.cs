using OrtFinetune.Training.Compiler.Autodiff;

namespace OrtFinetune.Training.Compiler.Gradients;

/// <summary>Arithmetic with broadcasting, and the elementwise math functions.</summary>
public static class ElementwiseRules
{
    public static void Register(GradientRegistry r)
    {
        r.Add("Add", c => { c.SetBroadcastGI(0, () => c.G); c.SetBroadcastGI(1, () => c.G); });
        r.Add("Sub", c => { c.SetBroadcastGI(0, () => c.G); c.SetBroadcastGI(1, () => -c.G); });
        r.Add("Mul", c => { c.SetBroadcastGI(0, () => c.G * c.I(1)); c.SetBroadcastGI(1, () => c.G * c.I(0)); });
        // y = a / b: da = g / b; db = -g y / b
        r.Add("Div", c => { c.SetBroadcastGI(0, () => c.G / c.I(1)); c.SetBroadcastGI(1, () => -(c.G * c.O(0) / c.I(1))); });
        // y = a mod b (fmod=1 on floats: a - b trunc(a/b)): da = g; b is not differentiated
        r.Add("Mod", c => c.SetBroadcastGI(0, () => c.G), inputs: [0]);
        r.Add("Neg", c => c.SetGI(0, -c.G));
        r.Add("Identity", c => c.SetGI(0, c.G));
        // y = a^p: da = g p a^(p-1); dp = g y ln(a) (p may have its own dtype)
        r.Add("Pow", c =>
        {
            var (a, p) = (c.I(0), c.I(1));
            c.SetBroadcastGI(0, () => { var pa = p.CastLike(a); return c.G * (pa * a.Pow(pa - 1)); });
            c.SetBroadcastGI(1, () => (c.G * (c.O(0) * a.Log())).CastLike(p));
        });
        r.Add("Sqrt", c => c.SetGI(0, c.G / (c.O(0) * 2)));
        r.Add("Exp", c => c.SetGI(0, c.G * c.O(0)));
        r.Add("Log", c => c.SetGI(0, c.G / c.I(0)));
        r.Add("Reciprocal", c => c.SetGI(0, -(c.G * (c.O(0) * c.O(0)))));
        r.Add("Abs", c => c.SetGI(0, c.G * c.I(0).Sign()));
        // d erf(x) = 2/√π e^(-x²)
        r.Add("Erf", c => c.SetGI(0, c.G * ((-(c.I(0) * c.I(0))).Exp() * (2 / Math.Sqrt(Math.PI)))));
        r.Add("Cast", c => c.SetGI(0, c.G.CastLike(c.I(0))));
        // y = cond ? a : b
        r.Add("Where", c => { c.SetBroadcastGI(1, () => V.Where(c.I(0), c.G, 0)); c.SetBroadcastGI(2, () => V.Where(c.I(0), 0, c.G)); }, inputs: [1, 2]);
        r.Add("Max", MinMax);
        r.Add("Min", MinMax);
        r.Add("Sum", c => { for (int i = 0; i < c.InputCount; i++) c.SetBroadcastGI(i, () => c.G); });
        r.Add("Mean", c =>
        {
            var g = c.G / c.InputCount;
            for (int i = 0; i < c.InputCount; i++) c.SetBroadcastGI(i, () => g);
        });
    }

    /// <summary>
    /// Max/Min of n broadcast inputs: the gradient goes to the inputs equal to the result, split
    /// evenly among ties (PyTorch's rule for maximum/minimum of two tensors).
    /// </summary>
    static void MinMax(GradientContext c)
    {
        var y = c.O(0);
        if (c.InputCount == 1) { c.SetGI(0, c.G); return; }
        var masks = Enumerable.Range(0, c.InputCount).Select(i => c.I(i).Eq(y).CastLike(y)).ToArray();
        var share = c.G / c.Val(c.B.Sum(masks.Select(m => m.Name).ToList()));
        for (int i = 0; i < c.InputCount; i++) c.SetBroadcastGI(i, () => share * masks[i]);
    }
}
