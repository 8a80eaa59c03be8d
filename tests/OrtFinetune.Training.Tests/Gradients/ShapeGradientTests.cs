using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Autodiff;
using OrtFinetune.Training.Tests.Support;
using Xunit.Abstractions;
using NodeAttribute = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Training.Tests.Gradients;

public class ShapeGradientTests(ITestOutputHelper log)
{
    static HostTensor X(int seed, params long[] shape) => GradCheck.Randn(seed, shape);
    static HostTensor I64(params long[] v) => HostTensor.I64(v, v.Length);
    static HostTensor I64Scalar(long v) => HostTensor.I64([v]) with { Shape = [] };
    static GradInput Ints(string name, params long[] v) => new(name, I64(v), false);

    GradCheckResult Check(string op, GradInput[] inputs, NodeAttribute[]? attrs = null, long opset = 17, int outputs = 1, int[]? loss = null, int seed = 1)
    {
        var gc = new GradCase { OpType = op, Inputs = inputs, Attributes = attrs ?? [], Opset = opset, Outputs = outputs, LossOutputs = loss ?? [0], Seed = seed };
        var r = GradCheck.Run(gc);
        log.WriteLine($"{gc} opset {opset} loss {string.Join(",", gc.LossOutputs)}: {r.UsedType} probes {r.Probes} max err {r.MaxAbsError:G3}");
        return r;
    }

    /// <summary>
    /// FD-checks the case with static shapes and constant index inputs, then checks that the graph
    /// compiled with symbolic dimensions, unknown output shapes and run-time index inputs gives the same gradient.
    /// </summary>
    void CheckBoth(string op, GradInput[] inputs, NodeAttribute[]? attrs = null, long opset = 17, int outputs = 1, int[]? loss = null, int seed = 1,
        bool outputRankKnown = true)
    {
        Check(op, inputs, attrs, opset, outputs, loss, seed);
        var gc = new GradCase { OpType = op, Inputs = inputs, Attributes = attrs ?? [], Opset = opset, Outputs = outputs, LossOutputs = loss ?? [0], Seed = seed };
        var stat = Analytic(gc, dynamic: false, outputRankKnown: true);
        var dyn = Analytic(gc, dynamic: true, outputRankKnown);
        for (int i = 0; i < stat.Length; i++)
        {
            Assert.Equal(stat[i].Length, dyn[i].Length);
            for (int e = 0; e < stat[i].Length; e++)
                Assert.True(Math.Abs(stat[i][e] - dyn[i][e]) <= 1e-9 + 1e-6 * Math.Abs(stat[i][e]),
                    $"{gc}: dynamic build differs at input {i} element {e}: {dyn[i][e]} vs {stat[i][e]}");
        }
    }

    /// <summary>
    /// Analytic gradient of loss = Σ sum(out_k · c_k) in float64. dynamic: differentiable inputs get
    /// symbolic dims and integer inputs other than "axes" become run-time graph inputs; output types get symbolic dims
    /// (or no shape at all when <paramref name="outputRankKnown"/> is false).
    /// </summary>
    static double[][] Analytic(GradCase gc, bool dynamic, bool outputRankKnown)
    {
        const DataType ft = DataType.Double;
        Model Build(out List<string> diff, out Dictionary<string, HostTensor> feeds)
        {
            var m = new Model();
            m.Opsets[""] = gc.Opset;
            var g = m.Graph;
            diff = new(); feeds = new();
            var names = new List<string>();
            foreach (var inp in gc.Inputs)
            {
                if (inp.Value == null) { names.Add(""); continue; }
                var t = inp.Value.Type.IsFloat() ? ft : inp.Value.Type;
                names.Add(inp.Name);
                if (inp.Differentiable)
                {
                    var shape = inp.Value.Shape.Select((d, a) => dynamic ? new Dim($"{inp.Name}_d{a}") : new Dim(d)).ToArray();
                    g.Inputs.Add(new ValueInfo(inp.Name, new TensorType(t, shape)));
                    diff.Add(inp.Name); feeds[inp.Name] = inp.Value.As(t);
                }
                else if (dynamic && !inp.Value.Type.IsFloat() && inp.Name != "axes") // Slice needs constant axes
                {
                    g.Inputs.Add(new ValueInfo(inp.Name, TensorType.Of(t, inp.Value.Shape)));
                    feeds[inp.Name] = inp.Value;
                }
                else g.Initializers[inp.Name] = Tensor.OfType(inp.Name, t, inp.Value.Values, inp.Value.Shape);
            }
            var node = new Node(gc.OpType, names, Enumerable.Range(0, gc.Outputs).Select(i => $"out{i}"), "node_under_test", gc.Domain);
            foreach (var a in gc.Attributes) node.Set(a);
            g.Nodes.Add(node);
            return m;
        }

        var fwd = Build(out var diff, out var feeds);
        foreach (var k in gc.LossOutputs) fwd.Graph.Outputs.Add(new ValueInfo($"out{k}", new TensorType(DataType.Undefined, null)));
        Dictionary<string, HostTensor> outs;
        using (var r = new OrtRunner(fwd, optimize: false)) outs = r.Run(feeds);

        var m = Build(out diff, out feeds);
        var gr = m.Graph;
        var b = new GraphBuilder(gr, gc.Opset);
        var terms = new List<string>();
        int s = 1000 + gc.Seed;
        foreach (var k in gc.LossOutputs)
        {
            var o = outs[$"out{k}"];
            var type = new TensorType(ft, o.Shape.Select((d, a) => dynamic ? new Dim($"out{k}_d{a}") : new Dim(d)).ToArray());
            // Without a recorded output type, an Identity (whose rule needs no shapes) carries the typed value.
            var typed = $"out{k}";
            if (outputRankKnown) gr.ValueTypes[typed] = type;
            else { typed = b.Op("Identity", [typed]); gr.ValueTypes[typed] = type; }
            var cot = b.Const(Tensor.OfType("", ft, GradCheck.RandnValues(++s, o.Count), o.Shape), $"cotangent{k}");
            var prod = b.Mul(typed, cot);
            gr.ValueTypes[prod] = type;
            var term = b.Op("ReduceSum", [prod], NodeAttribute.Of("keepdims", 0L));
            gr.ValueTypes[term] = new TensorType(ft, []);
            terms.Add(term);
        }
        var loss = b.Sum(terms);
        gr.Nodes[^1].Outputs[0] = "loss";
        gr.ValueTypes["loss"] = new TensorType(ft, []);
        gr.Outputs.Add(new ValueInfo("loss", new TensorType(ft, [])));
        var grads = Autodiff.Differentiate(gr, gc.Opset, "loss", diff);
        for (int i = 0; i < diff.Count; i++) gr.Outputs.Add(new ValueInfo(grads[i], gr.TypeOf(diff[i])!));
        using var run = new OrtRunner(m);
        var res = run.Run(feeds);
        return grads.Select((gname, i) =>
        {
            Assert.True(res[gname].Shape.SequenceEqual(feeds[diff[i]].Shape), $"{gc}: gradient shape [{string.Join(",", res[gname].Shape)}]");
            return res[gname].Values;
        }).ToArray();
    }

    // ------------------------------------------------------------------ reshapes

    [Fact]
    public void Reshape()
    {
        CheckBoth("Reshape", [new("x", X(1, 2, 3, 4)), Ints("shape", 0, -1)]);
        CheckBoth("Reshape", [new("x", X(2, 6, 4)), Ints("shape", 2, -1, 3)]);
        CheckBoth("Reshape", [new("x", X(3, 24)), Ints("shape", 4, 3, 2)]);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(-1)]
    public void Flatten(long axis) => CheckBoth("Flatten", [new("x", X(3, 2, 3, 4))], [NodeAttribute.Of("axis", axis)]);

    [Fact]
    public void Transpose()
    {
        CheckBoth("Transpose", [new("x", X(4, 2, 3, 4))]);
        CheckBoth("Transpose", [new("x", X(5, 2, 3, 4))], [NodeAttribute.Of("perm", new long[] { 1, 0, 2 })]);
        CheckBoth("Transpose", [new("x", X(6, 2, 3, 4))], [NodeAttribute.Of("perm", new long[] { 2, 0, 1 })]);
        CheckBoth("Transpose", [new("x", X(7, 2, 3, 4, 5))], [NodeAttribute.Of("perm", new long[] { 0, 2, 3, 1 })]);
    }

    [Fact]
    public void SqueezeUnsqueeze()
    {
        CheckBoth("Squeeze", [new("x", X(8, 2, 1, 3)), Ints("axes", 1)]);
        CheckBoth("Squeeze", [new("x", X(9, 1, 3, 1)), Ints("axes", -1, 0)]);
        CheckBoth("Squeeze", [new("x", X(10, 1, 3, 1))]);
        CheckBoth("Unsqueeze", [new("x", X(11, 2, 3)), Ints("axes", 0, 3)]);
        CheckBoth("Unsqueeze", [new("x", X(12, 2, 3)), Ints("axes", -1)]);
    }

    [Theory]
    [InlineData(new long[] { 3, 1 }, new long[] { 2, 3, 4 })]
    [InlineData(new long[] { 4 }, new long[] { 2, 3, 4 })]
    [InlineData(new long[] { 1 }, new long[] { 5 })]
    [InlineData(new long[] { 2, 1, 4 }, new long[] { 2, 3, 4 })]
    [InlineData(new long[] { 3, 1 }, new long[] { 1, 1 })]
    [InlineData(new long[] { 2, 3 }, new long[] { 2, 3 })]
    [InlineData(new long[] { 1, 3, 1 }, new long[] { 4, 1, 1, 2 })]
    public void Expand(long[] x, long[] shape)
    {
        CheckBoth("Expand", [new("x", X(14, x)), Ints("shape", shape)]);
        CheckBoth("Expand", [new("x", X(15, x)), Ints("shape", shape)], outputRankKnown: false);
    }

    // ------------------------------------------------------------------ concat / split

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(-1)]
    public void Concat(long axis)
    {
        long[] S(long k) { var s = new long[] { 2, 3, 4 }; s[(int)(axis < 0 ? axis + 3 : axis)] = k; return s; }
        CheckBoth("Concat", [new("a", X(16, S(1))), new("b", X(17, S(3)))], [NodeAttribute.Of("axis", axis)]);
        CheckBoth("Concat", [new("a", X(18, S(2))), new("b", X(19, S(1))), new("c", X(20, S(3)))], [NodeAttribute.Of("axis", axis)]);
    }

    [Fact]
    public void ConcatWithConstantInput()
    {
        // only some inputs are trainable
        Check("Concat", [new("a", X(21, 2, 3)), new("k", X(22, 2, 2), false), new("c", X(23, 2, 1))], [NodeAttribute.Of("axis", 1L)]);
    }

    public static TheoryData<int[]> LossSubsets => new() { new[] { 0, 1, 2 }, new[] { 0 }, new[] { 1, 2 }, new[] { 2 } };

    [Theory, MemberData(nameof(LossSubsets))]
    public void SplitWithSizes(int[] loss)
    {
        CheckBoth("Split", [new("x", X(24, 2, 6, 3)), Ints("split", 2, 3, 1)], [NodeAttribute.Of("axis", 1L)], outputs: 3, loss: loss);
    }

    [Theory, MemberData(nameof(LossSubsets))]
    public void SplitEqual(int[] loss)
    {
        CheckBoth("Split", [new("x", X(26, 2, 3, 6))], [NodeAttribute.Of("axis", -1L)], outputs: 3, loss: loss);
        // opset 18: num_outputs, uneven last chunk (7 = 3 + 3 + 1)
        CheckBoth("Split", [new("x", X(27, 7, 2))], [NodeAttribute.Of("num_outputs", 3L)], opset: 18, outputs: 3, loss: loss);
    }

    // ------------------------------------------------------------------ slice

    public static TheoryData<long[], long[], long[]?, long[]?> SliceCases => new()
    {
        { [1], [3], null, null },                              // axis 0 by default
        { [1, 0], [-1, 100], [1, 2], null },                   // negative end, clamped end
        { [0], [5], [2], [2] },                                // step 2
        { [-1], [-100], [1], [-1] },                           // reverse whole axis
        { [3, -2], [0, 0], [1, 2], [-1, -2] },                 // negative steps with negative start
        { [-3], [long.MaxValue], [-1], null },                 // negative start, INT64_MAX end
        { [1, 1, 0], [2, 4, 3], [0, 1, 2], [1, 2, 1] },         // all axes
        { [2], [2], [1], null },                               // empty slice
    };

    [Theory, MemberData(nameof(SliceCases))]
    public void Slice(long[] starts, long[] ends, long[]? axes, long[]? steps)
    {
        var ins = new List<GradInput> { new("x", X(28, 3, 4, 5)), Ints("starts", starts), Ints("ends", ends) };
        if (axes != null || steps != null) ins.Add(axes != null ? Ints("axes", axes) : GradInput.None);
        if (steps != null) ins.Add(Ints("steps", steps));
        CheckBoth("Slice", ins.ToArray());
    }

    // ------------------------------------------------------------------ gather

    public static TheoryData<long[], HostTensor, long> GatherCases => new()
    {
        { [5, 3], I64(2, 0, 2, -1), 0 },                        // repeated and negative indices
        { [4, 3], I64Scalar(0), 1 },                            // x[:, 0]
        { [4, 3], I64Scalar(-1), 0 },                           // x[-1]
        { [5, 3], HostTensor.I64([0, 1, 1, 4, 1, -5], 2, 3), 0 }, // 2-D indices (embedding lookup)
        { [2, 5, 3], HostTensor.I64([4, 4, 0, -2], 2, 2), 1 },     // 2-D indices on a middle axis
        { [2, 3, 4], I64(3, 3, 1), -1 },                        // last axis, repeated
        { [6], I64(5, 0, 5, 5), 0 },                            // 1-D data
    };

    [Theory, MemberData(nameof(GatherCases))]
    public void Gather(long[] data, HostTensor idx, long axis)
    {
        CheckBoth("Gather", [new("x", X(30, data)), new("idx", idx, false)], [NodeAttribute.Of("axis", axis)]);
        CheckBoth("Gather", [new("x", X(30, data)), new("idx", idx, false)], [NodeAttribute.Of("axis", axis)], opset: 13); // one-hot fallback
    }

    [Fact]
    public void GatherInt32Indices()
    {
        var idx = new HostTensor(DataType.Int32, [3], [1, -1, 1]);
        Check("Gather", [new("x", X(31, 4, 2)), new("idx", idx, false)], [NodeAttribute.Of("axis", 0L)]);
        Check("Gather", [new("x", X(31, 4, 2)), new("idx", idx, false)], [NodeAttribute.Of("axis", 1L)]);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(-1)]
    public void GatherElements(long axis)
    {
        var idx = axis == 0 ? HostTensor.I64([0, 2, -1, 0, 0, 1], 2, 3) : HostTensor.I64([1, 1, -3, 0, 2, 2, 2, 0], 2, 4);
        var x = axis == 0 ? X(32, 3, 3) : X(33, 2, 3);
        CheckBoth("GatherElements", [new("x", x), new("idx", idx, false)], [NodeAttribute.Of("axis", axis)]);
    }

    // ------------------------------------------------------------------ tile / pad

    [Theory]
    [InlineData(new long[] { 2, 3 }, new long[] { 2, 1 })]
    [InlineData(new long[] { 2, 1, 3 }, new long[] { 1, 3, 2 })]
    [InlineData(new long[] { 4 }, new long[] { 3 })]
    [InlineData(new long[] { 2, 3 }, new long[] { 1, 1 })]
    public void Tile(long[] x, long[] reps) => CheckBoth("Tile", [new("x", X(34, x)), Ints("repeats", reps)]);

    [Theory]
    [InlineData(new long[] { 1, 0, 2, 1 })]
    [InlineData(new long[] { 0, 0, 0, 3 })]
    [InlineData(new long[] { -1, 2, 1, -2 })]
    public void Pad(long[] pads)
    {
        CheckBoth("Pad", [new("x", X(35, 3, 5)), Ints("pads", pads)]);
        Check("Pad", [new("x", X(35, 3, 5)), Ints("pads", pads), new("value", HostTensor.F64([0.5]) with { Shape = [] }, false)]);
    }

    [Fact]
    public void PadWithAxes()
    {
        CheckBoth("Pad", [new("x", X(36, 2, 3, 4)), Ints("pads", 1, -1, 2, 1), GradInput.None, Ints("axes", 2, 0)], opset: 18);
    }

    [Fact]
    public void PadReflectIsRejected()
    {
        var e = Assert.ThrowsAny<Exception>(() => Check("Pad", [new("x", X(37, 3, 5)), Ints("pads", 1, 1, 1, 1)], [NodeAttribute.Of("mode", "reflect")]));
        Assert.Contains("reflect", e.Message);
    }
}
