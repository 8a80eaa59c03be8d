using OrtFinetune.Onnx;

namespace OrtFinetune.Onnx.Tests.Support;

/// <summary>One-node models for inference unit tests, optionally cross-checked in ORT.</summary>
public static class OneNode
{
    /// <summary>Parses "float[N,3,4]", "int64[]", "bool[?]" (unknown dim) or "float" (rank unknown).</summary>
    public static TensorType T(string s)
    {
        int b = s.IndexOf('[');
        var et = (b < 0 ? s : s[..b]) switch
        {
            "float" => DataType.Float, "double" => DataType.Double, "float16" => DataType.Float16, "int64" => DataType.Int64,
            "int32" => DataType.Int32, "bool" => DataType.Bool, "bfloat16" => DataType.BFloat16, "undefined" => DataType.Undefined,
            var x => throw new ArgumentException(x),
        };
        if (b < 0) return new TensorType(et, null);
        var body = s[(b + 1)..^1];
        var dims = body.Length == 0 ? [] : body.Split(',').Select(d => d == "?" ? Dim.Unknown : long.TryParse(d, out var v) ? new Dim(v) : new Dim(d)).ToArray();
        return new TensorType(et, dims);
    }

    /// <summary>
    /// Builds op(inputs) where each input is a type string / TensorType (graph input), a Tensor (initializer) or null (omitted);
    /// infers, and when <paramref name="ort"/> and all graph inputs are static, checks the result against ORT.
    /// </summary>
    public static TensorType[] Run(string op, object?[] inputs, int outputs = 1, long opset = 17, bool ort = true, string domain = "", params NodeAttribute[] attrs)
        => Run(op, inputs, out _, outputs, opset, ort, domain, attrs);

    public static TensorType[] Run(string op, object?[] inputs, out InferenceResult result, int outputs = 1, long opset = 17, bool ort = true, string domain = "", params NodeAttribute[] attrs)
    {
        var m = new Model();
        m.Opsets[""] = opset;
        if (domain.Length > 0) m.Opsets[domain] = 1;
        var g = m.Graph;
        var names = new List<string>();
        for (int i = 0; i < inputs.Length; i++)
        {
            var name = $"in{i}";
            switch (inputs[i])
            {
                case null: names.Add(""); continue;
                case string s: g.Inputs.Add(new ValueInfo(name, T(s))); break;
                case TensorType t: g.Inputs.Add(new ValueInfo(name, t)); break;
                case Tensor c: g.Initializers[name] = c.WithName(name); break;
                default: throw new ArgumentException(inputs[i]!.GetType().Name);
            }
            names.Add(name);
        }
        var outs = Enumerable.Range(0, outputs).Select(i => $"out{i}").ToArray();
        var n = new Node(op, names, outs, "node", domain);
        foreach (var a in attrs) n.Set(a);
        g.Nodes.Add(n);
        foreach (var o in outs) g.Outputs.Add(new ValueInfo(o, new TensorType(DataType.Undefined, null)));
        result = ShapeInference.Run(m);
        var types = outs.Select(o => g.ValueTypes[o]).ToArray();
        if (ort && g.Inputs.All(i => i.Type.IsStatic))
        {
            var actual = OrtShapes.RunAll(m);
            var errors = new List<string>();
            ShapeCheck.Compare(m, actual, errors);
            Assert.True(errors.Count == 0, string.Join("\n", errors));
        }
        return types;
    }

    public static string S(TensorType t) => t.ToString();
    public static string[] S(TensorType[] t) => t.Select(x => x.ToString()).ToArray();
}
