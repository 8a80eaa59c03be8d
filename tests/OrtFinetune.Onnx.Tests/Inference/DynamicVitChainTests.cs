using OrtFinetune.Onnx;
using OrtFinetune.Onnx.Tests.Support;
using Xunit.Abstractions;

namespace OrtFinetune.Onnx.Tests.Inference;

/// <summary>
/// A hand-built graph with the shape-computation chains torch emits for a dynamic-batch ViT
/// (Shape/Gather/Unsqueeze/Concat/Reshape, the class-token Expand via ConstantOfShape/Mul(-1)/Equal/Where,
/// Slice with computed bounds, integer Add/Div/Mul, Cast), checked against ORT at two batch sizes.
/// </summary>
public class DynamicVitChainTests(ITestOutputHelper log)
{
    public static Model Build() => Build(out _);

    public static Model Build(out Dictionary<string, string> v)
    {
        var m = new Model();
        var g = m.Graph;
        var b = new GraphBuilder(g, 17);
        g.Inputs.Add(new ValueInfo("x", new TensorType(DataType.Float, [new Dim("N"), 3, 8, 8])));
        var rnd = new Random(3);
        float[] R(int n) => Enumerable.Range(0, n).Select(_ => (float)rnd.NextDouble() - 0.5f).ToArray();
        var w = b.Const(Tensor.Float("w", R(16 * 3 * 4 * 4), 16, 3, 4, 4), "w");
        var ct = b.Const(Tensor.Float("ct", R(16), 1, 1, 16), "class_token");
        var conv = b.Op("Conv", ["x", w], NodeAttribute.Of("kernel_shape", new long[] { 4, 4 }), NodeAttribute.Of("strides", new long[] { 4, 4 }));
        var s = b.Shape(conv);
        var n = b.Op("Gather", [s, b.IntScalar(0)], NodeAttribute.Of("axis", 0L));
        var ch = b.Op("Gather", [s, b.IntScalar(1)], NodeAttribute.Of("axis", 0L));
        var target = b.Concat(0, b.Unsqueeze(n, 0), b.Unsqueeze(ch, 0), b.Ints(-1));
        var seq = b.Transpose(b.Reshape(conv, target), 0, 2, 1);                  // [N,4,16]
        // class token: expand(n, -1, -1)
        var want = b.Concat(0, b.Unsqueeze(n, 0), b.Ints(-1), b.Ints(-1));
        var ones = b.Op("ConstantOfShape", [b.Shape(want)], NodeAttribute.Of("value", Tensor.Int64("v", [1], 1)));
        var neg = b.Mul(ones, b.IntScalar(-1));
        var where = b.Where(b.Op("Equal", [want, neg]), ones, want);
        var cls = b.Expand(ct, where);                                             // [N,1,16]
        var h = b.Concat(1, cls, seq);                                             // [N,5,16]
        // attention-style reshapes: [L, N*heads, E/heads] and back
        var hs = b.Shape(h);
        var bn = b.Op("Gather", [hs, b.IntScalar(0)], NodeAttribute.Of("axis", 0L));
        var L = b.Op("Gather", [hs, b.IntScalar(1)], NodeAttribute.Of("axis", 0L));
        var E = b.Op("Gather", [hs, b.IntScalar(2)], NodeAttribute.Of("axis", 0L));
        var bh = b.Mul(bn, b.IntScalar(2));
        var hd = b.Cast(b.Div(E, b.IntScalar(2)), DataType.Int64);
        var t = b.Transpose(h, 1, 0, 2);                                           // [5,N,16]
        var heads = b.Reshape(t, b.Concat(0, b.Unsqueeze(L, 0), b.Unsqueeze(bh, 0), b.Unsqueeze(hd, 0)));  // [5,2N,8]
        var back = b.Reshape(heads, b.Concat(0, b.Unsqueeze(L, 0), b.Unsqueeze(bn, 0), b.Unsqueeze(E, 0))); // [5,N,16]
        // chunk-style slice of the last dim with computed bounds: (E + 1) / 2
        var last = b.Op("Gather", [hs, b.Ints(-1)], NodeAttribute.Of("axis", 0L));
        var half = b.Div(b.Add(last, b.Ints(1)), b.Ints(2));
        var sl = b.Op("Slice", [back, half, b.Mul(half, b.Ints(2)), b.Ints(-1)]);  // [5,N,8]
        // slice of the batch dim with a symbolic end, flatten with -1, Size, Range, Gemm head
        var drop1 = b.Op("Slice", [h, b.Ints(1), b.Unsqueeze(bn, 0), b.Ints(0)]);  // [N-1,5,16]
        var flat = b.Reshape(sl, b.Ints(-1, 8));                                    // [5N,8]
        var size = b.Op("Size", [h]);
        var rng = b.Op("Range", [b.IntScalar(0), bn, b.IntScalar(1)]);             // [N]
        var first = b.Op("Gather", [h, b.IntScalar(0)], NodeAttribute.Of("axis", 1L)); // [N,16]
        var wfc = b.Const(Tensor.Float("wfc", R(10 * 16), 10, 16), "wfc");
        var logits = b.Op("Gemm", [first, wfc], NodeAttribute.Of("transB", 1L));      // [N,10]
        var mean = b.ReduceMean(drop1, [1], false);                                 // [N-1,16]
        var sm = b.Op("Softmax", [logits], NodeAttribute.Of("axis", -1L));
        var ln = b.OpN("LayerNormalization", [h, b.Const(Tensor.Float("g", R(16), 16)), b.Const(Tensor.Float("bb", R(16), 16))], 3);
        var mm = b.MatMul(ln[0], b.Transpose(h, 0, 2, 1));                         // [N,5,5]
        foreach (var o in new[] { sm, flat, size, rng, mean, mm, drop1 }) g.Outputs.Add(new ValueInfo(o, new TensorType(DataType.Undefined, null)));
        v = new() { ["cls"] = cls, ["h"] = h, ["heads"] = heads, ["back"] = back, ["sl"] = sl, ["drop1"] = drop1, ["flat"] = flat,
            ["rng"] = rng, ["logits"] = logits, ["mean"] = ln[1], ["size"] = size, ["where"] = where, ["mm"] = mm };
        return m;
    }

    [Theory, InlineData(2), InlineData(3), InlineData(5)]
    public void SymbolicChainsMatchOrt(long batch)
    {
        var m = Build();
        var res = ShapeInference.Run(m);
        Assert.Empty(res.UnknownOps);
        var actual = OrtShapes.RunAll(m, symbolicDim: batch);
        var errors = new List<string>();
        var st = ShapeCheck.Compare(m, actual, errors);
        log.WriteLine($"static {st.Static}, symbolic {st.Symbolic}, unknown {st.Unknown}; {string.Join(", ", st.Binding.Select(kv => kv.Key + "=" + kv.Value))}");
        Assert.True(errors.Count == 0, string.Join("\n", errors));
        Assert.Equal(0, st.Unknown);
        Assert.Equal(batch, st.Binding["N"]);
    }

    [Fact]
    public void ExpectedSymbolicShapes()
    {
        var m = Build(out var v);
        var res = ShapeInference.Run(m);
        string T(string k) => m.Graph.ValueTypes[v[k]].ToString();
        Assert.Equal("float[N,1,16]", T("cls"));
        Assert.Equal("float[N,5,16]", T("h"));
        Assert.Equal("float[5,2*N,8]", T("heads"));
        Assert.Equal("float[5,N,16]", T("back"));
        Assert.Equal("float[5,N,8]", T("sl"));
        Assert.Equal("float[(N-1),5,16]", T("drop1"));
        Assert.Equal("float[5*N,8]", T("flat"));
        Assert.Equal("int64[N]", T("rng"));
        Assert.Equal("float[N,10]", T("logits"));
        Assert.Equal("float[N,5,1]", T("mean"));
        Assert.Equal("float[N,5,5]", T("mm"));
        Assert.Equal("80*N", res.Values[v["size"]].Single().ToString());
        Assert.Equal("N,1,1", string.Join(",", res.Values[v["where"]]));
    }
}
