using OrtFinetune.Onnx;

namespace OrtFinetune.Onnx.Tests.Support;

/// <summary>Compares inferred types with ORT's actual outputs: static dims equal, each symbol bound to one value.</summary>
public static class ShapeCheck
{
    public sealed record Stats(int Static, int Symbolic, int Unknown, Dictionary<string, long> Binding);

    public static Stats Compare(Model m, Dictionary<string, (DataType Type, long[] Shape)> actual, List<string> errors)
    {
        var binding = new Dictionary<string, long>();
        int st = 0, sy = 0, un = 0;
        foreach (var n in m.Graph.Nodes)
            foreach (var o in n.Outputs.Where(o => o.Length > 0))
            {
                var t = m.Graph.ValueTypes[o];
                var (at, ashape) = actual[o];
                var a = $"ORT {at}[{string.Join(",", ashape)}]";
                if (t.ElemType != at) errors.Add($"{n.Describe()} output '{o}': {t} vs {a}");
                if (t.Shape == null) { errors.Add($"{n.Describe()} output '{o}': rank unknown ({a})"); continue; }
                if (t.Shape.Length != ashape.Length) { errors.Add($"{n.Describe()} output '{o}': {t} vs {a}"); continue; }
                for (int k = 0; k < ashape.Length; k++)
                {
                    var d = t.Shape[k];
                    if (d.Value is long v) { st++; if (v != ashape[k]) errors.Add($"{n.Describe()} output '{o}': {t} vs {a}"); }
                    else if (d.Symbol is string s)
                    {
                        sy++;
                        if (binding.TryGetValue(s, out var bv) && bv != ashape[k])
                            errors.Add($"{n.Describe()} output '{o}': symbol {s} = {ashape[k]} here but {bv} elsewhere ({t} vs {a})");
                        binding[s] = ashape[k];
                    }
                    else un++;
                }
            }
        return new Stats(st, sy, un, binding);
    }
}
