using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Autodiff;

namespace OrtFinetune.Training.Compiler.Gradients;

/// <summary>Arithmetic with broadcasting, and the elementwise math functions.</summary>
public static class ElementwiseRules
{
    public static void Register(GradientRegistry r)
    {
        r.Add("Add", c => { var g = c.GO(0)!; c.SetGI(0, c.Unbroadcast(g, c.I(0))); c.SetGI(1, c.Unbroadcast(g, c.I(1))); });
        r.Add("Sub", c =>
        {
            var g = c.GO(0)!;
            c.SetGI(0, c.Unbroadcast(g, c.I(0)));
            if (c.Need(1)) c.SetGI(1, c.Unbroadcast(c.B.Neg(g), c.I(1)));
        });
        r.Add("Mul", c =>
        {
            var g = c.GO(0)!;
            if (c.Need(0)) c.SetGI(0, c.Unbroadcast(c.B.Mul(g, c.I(1)), c.I(0)));
            if (c.Need(1)) c.SetGI(1, c.Unbroadcast(c.B.Mul(g, c.I(0)), c.I(1)));
        });
        r.Add("Div", c =>
        {
            // y = a / b: da = g / b; db = -g * y / b
            var g = c.GO(0)!;
            if (c.Need(0)) c.SetGI(0, c.Unbroadcast(c.B.Div(g, c.I(1)), c.I(0)));
            if (c.Need(1)) c.SetGI(1, c.Unbroadcast(c.B.Neg(c.B.Div(c.B.Mul(g, c.O(0)), c.I(1))), c.I(1)));
        });
        r.Add("Neg", c => c.SetGI(0, c.B.Neg(c.GO(0)!)));
        r.Add("Identity", c => c.SetGI(0, c.GO(0)!));
        r.Add("Pow", c =>
        {
            // y = a^p: da = g * p * a^(p-1); dp = g * y * ln(a)
            var g = c.GO(0)!;
            var (a, p) = (c.I(0), c.I(1));
            if (c.Need(0))
            {
                var pa = c.ElemType(p) == c.ElemType(a) ? p : c.B.Cast(p, c.ElemType(a));
                var pm1 = c.B.Sub(pa, c.ScalarLike(1, a));
                c.SetGI(0, c.Unbroadcast(c.B.Mul(g, c.B.Mul(pa, c.B.Op("Pow", [a, pm1]))), a));
            }
            if (c.Need(1))
            {
                var d = c.B.Mul(g, c.B.Mul(c.O(0), c.B.Op("Log", [a])));
                if (c.ElemType(p) != c.ElemType(a)) d = c.B.Cast(d, c.ElemType(p));
                c.SetGI(1, c.Unbroadcast(d, p));
            }
        });
        r.Add("Sqrt", c => c.SetGI(0, c.B.Div(c.GO(0)!, c.B.Mul(c.O(0), c.ScalarLike(2, c.O(0))))));
        r.Add("Exp", c => c.SetGI(0, c.B.Mul(c.GO(0)!, c.O(0))));
        r.Add("Log", c => c.SetGI(0, c.B.Div(c.GO(0)!, c.I(0))));
        r.Add("Reciprocal", c => c.SetGI(0, c.B.Neg(c.B.Mul(c.GO(0)!, c.B.Mul(c.O(0), c.O(0))))));
        r.Add("Abs", c => c.SetGI(0, c.B.Mul(c.GO(0)!, c.B.Op("Sign", [c.I(0)]))));
        r.Add("Erf", c =>
        {
            // d erf(x) = 2/sqrt(pi) * exp(-x^2)
            var x = c.I(0);
            var e = c.B.Op("Exp", [c.B.Neg(c.B.Mul(x, x))]);
            c.SetGI(0, c.B.Mul(c.GO(0)!, c.B.Mul(e, c.ScalarLike(2 / Math.Sqrt(Math.PI), x))));
        });
        r.Add("Cast", c =>
        {
            var from = c.ElemType(c.I(0));
            c.SetGI(0, c.ElemType(c.O(0)) == from ? c.GO(0)! : c.B.Cast(c.GO(0)!, from));
        });
        r.Add("Where", c =>
        {
            // y = cond ? a : b
            var g = c.GO(0)!;
            var zero = c.ScalarLike(0, c.O(0));
            if (c.Need(1)) c.SetGI(1, c.Unbroadcast(c.B.Where(c.I(0), g, zero), c.I(1)));
            if (c.Need(2)) c.SetGI(2, c.Unbroadcast(c.B.Where(c.I(0), zero, g), c.I(2)));
        }, inputs: [1, 2]);
        r.Add("Max", MinMax);
        r.Add("Min", MinMax);
        r.Add("Sum", c =>
        {
            for (int i = 0; i < c.InputCount; i++) if (c.Need(i)) c.SetGI(i, c.Unbroadcast(c.GO(0)!, c.I(i)));
        });
        r.Add("Mean", c =>
        {
            var g = c.B.Div(c.GO(0)!, c.ScalarLike(c.InputCount, c.O(0)));
            for (int i = 0; i < c.InputCount; i++) if (c.Need(i)) c.SetGI(i, c.Unbroadcast(g, c.I(i)));
        });
    }

    /// <summary>
    /// Max/Min of n broadcast inputs: the gradient goes to the inputs equal to the result, split
    /// evenly among ties (PyTorch's rule for maximum/minimum of two tensors).
    /// </summary>
    static void MinMax(GradientContext c)
    {
        var g = c.GO(0)!;
        var y = c.O(0);
        var t = c.ElemType(y);
        if (c.InputCount == 1) { c.SetGI(0, g); return; }
        var masks = Enumerable.Range(0, c.InputCount).Select(i => c.B.Cast(c.B.Op("Equal", [c.I(i), y]), t)).ToArray();
        var count = c.B.Sum(masks);
        var share = c.B.Div(g, count);
        for (int i = 0; i < c.InputCount; i++)
            if (c.Need(i)) c.SetGI(i, c.Unbroadcast(c.B.Mul(share, masks[i]), c.I(i)));
    }
}
