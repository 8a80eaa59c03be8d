using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Autodiff;
using NodeAttribute = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Training.Tests.Support;

/// <summary>One input of the node under test. Non-differentiable inputs become initializers.</summary>
public sealed record GradInput(string Name, HostTensor? Value, bool Differentiable = true)
{
    /// <summary>An omitted optional input.</summary>
    public static GradInput None => new("", null, false);
}

/// <summary>A single-node gradient check: the node, its inputs, which outputs feed the loss, tolerances.</summary>
public sealed class GradCase
{
    public required string OpType { get; init; }
    public string Domain { get; init; } = "";
    public NodeAttribute[] Attributes { get; init; } = [];
    public required GradInput[] Inputs { get; init; }
    /// <summary>Number of node outputs to declare.</summary>
    public int Outputs { get; init; } = 1;
    /// <summary>Outputs that feed the scalar loss sum(output * random cotangent).</summary>
    public int[] LossOutputs { get; init; } = [0];
    public long Opset { get; init; } = 17;
    public int Seed { get; init; } = 1;
    /// <summary>Elements probed per input (all when the input is smaller).</summary>
    public int MaxProbes { get; init; } = 48;
    /// <summary>Optional tolerance overrides.</summary>
    public double? Rtol { get; init; }
    public double? Atol { get; init; }
    /// <summary>Set to Float to skip the float64 attempt (ops without double kernels).</summary>
    public DataType PreferredType { get; init; } = DataType.Double;
    public override string ToString() => $"{OpType}({string.Join(", ", Inputs.Select(i => i.Value == null ? "-" : $"{i.Name}[{string.Join(",", i.Value.Shape)}]"))}) {string.Join(" ", Attributes.Select(a => a.ToString()))} seed={Seed}";
}

public sealed record GradCheckResult(DataType UsedType, int Probes, double MaxAbsError, double MaxRelError);

/// <summary>
/// Finite-difference check of a gradient rule. Builds forward(x) -> loss = Σ sum(out_k · c_k) with
/// random cotangents c_k, differentiates it with <see cref="Autodiff"/>, and compares the analytic
/// gradient with central differences of the loss computed by ORT. Runs in float64 when ORT's CPU
/// provider has double kernels for every op involved, else in float32 with wider tolerances.
/// </summary>
public static class GradCheck
{
    public static double[] RandnValues(int seed, long n, double scale = 1.0, double offset = 0.0)
    {
        var rng = new Random(seed);
        var v = new double[n];
        for (long i = 0; i < n; i++)
        {
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            v[i] = offset + scale * Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
        }
        return v;
    }

    public static HostTensor Randn(int seed, params long[] shape) => HostTensor.F64(RandnValues(seed, shape.Aggregate(1L, (a, b) => a * b)), shape);

    /// <summary>Uniform values in [lo, hi).</summary>
    public static HostTensor Uniform(int seed, double lo, double hi, params long[] shape)
    {
        var rng = new Random(seed);
        long n = shape.Aggregate(1L, (a, b) => a * b);
        return HostTensor.F64(Enumerable.Range(0, (int)n).Select(_ => lo + (hi - lo) * rng.NextDouble()).ToArray(), shape);
    }

    public static GradCheckResult Run(GradCase c)
    {
        if (c.PreferredType == DataType.Double)
        {
            try { return RunAs(c, DataType.Double); }
            catch (OnnxRuntimeException e) when (IsMissingKernel(e)) { }
        }
        return RunAs(c, DataType.Float);
    }

    static bool IsMissingKernel(OnnxRuntimeException e) =>
        e.Message.Contains("NOT_IMPLEMENTED") || e.Message.Contains("Could not find an implementation") || e.Message.Contains("type (tensor(double))");

    static Model Forward(GradCase c, DataType ft, out List<string> diffNames)
    {
        var m = new Model();
        m.Opsets[""] = c.Opset;
        if (c.Domain.Length > 0) m.Opsets[c.Domain] = 1;
        var g = m.Graph;
        diffNames = new List<string>();
        var names = new List<string>();
        foreach (var inp in c.Inputs)
        {
            if (inp.Value == null) { names.Add(""); continue; }
            var t = inp.Value.Type.IsFloat() ? ft : inp.Value.Type;
            if (inp.Differentiable)
            {
                g.Inputs.Add(new ValueInfo(inp.Name, TensorType.Of(t, inp.Value.Shape)));
                diffNames.Add(inp.Name);
            }
            else g.Initializers[inp.Name] = Tensor.OfType(inp.Name, t, inp.Value.Values, inp.Value.Shape);
            names.Add(inp.Name);
        }
        var outs = Enumerable.Range(0, c.Outputs).Select(i => $"out{i}").ToList();
        var node = new Node(c.OpType, names, outs, "node_under_test", c.Domain);
        foreach (var a in c.Attributes) node.Set(a);
        g.Nodes.Add(node);
        return m;
    }

    static GradCheckResult RunAs(GradCase c, DataType ft)
    {
        // 1. Forward once to learn output shapes.
        var fwd = Forward(c, ft, out var diff);
        foreach (var k in c.LossOutputs) fwd.Graph.Outputs.Add(new ValueInfo($"out{k}", new TensorType(DataType.Undefined, null)));
        var feeds = c.Inputs.Where(i => i.Differentiable && i.Value != null).ToDictionary(i => i.Name, i => i.Value!.As(ft));
        Dictionary<string, HostTensor> outs;
        using (var r = new OrtRunner(fwd, optimize: false)) outs = r.Run(feeds);

        // 2. Loss model.
        Model LossModel()
        {
            var m = Forward(c, ft, out _);
            var g = m.Graph;
            var b = new GraphBuilder(g, c.Opset);
            var terms = new List<string>();
            int s = c.Seed * 7919;
            foreach (var k in c.LossOutputs)
            {
                var o = outs[$"out{k}"];
                var ot = o.Type.IsFloat() ? ft : o.Type;
                g.ValueTypes[$"out{k}"] = TensorType.Of(ot, o.Shape);
                var cot = b.Const(Tensor.OfType("", ot, RandnValues(++s, o.Count), o.Shape), $"cotangent{k}");
                var prod = b.Mul($"out{k}", cot);
                g.ValueTypes[prod] = TensorType.Of(ot, o.Shape);
                var term = b.Op("ReduceSum", [prod], NodeAttribute.Of("keepdims", 0L));
                g.ValueTypes[term] = new TensorType(ot, []);
                terms.Add(term);
            }
            var loss = b.Sum(terms);
            g.ValueTypes[loss] = new TensorType(ft, []);
            g.Nodes[^1].Outputs[0] = "loss";
            g.ValueTypes["loss"] = new TensorType(ft, []);
            g.Outputs.Add(new ValueInfo("loss", new TensorType(ft, [])));
            return m;
        }

        var gm = LossModel();
        var grads = Autodiff.Differentiate(gm.Graph, c.Opset, "loss", diff);
        for (int i = 0; i < diff.Count; i++) gm.Graph.Outputs.Add(new ValueInfo(grads[i], gm.Graph.TypeOf(diff[i])!));
        Dictionary<string, HostTensor> analytic;
        using (var r = new OrtRunner(gm)) analytic = r.Run(feeds);

        // 3. Central differences.
        double h = ft == DataType.Double ? 1e-6 : 1e-2;
        double rtol = c.Rtol ?? (ft == DataType.Double ? 1e-5 : 3e-2);
        double atol = c.Atol ?? (ft == DataType.Double ? 1e-7 : 3e-3);
        using var lr = new OrtRunner(LossModel(), optimize: false);
        double maxAbs = 0, maxRel = 0;
        int probes = 0;
        var rng = new Random(c.Seed);
        for (int i = 0; i < diff.Count; i++)
        {
            var x = feeds[diff[i]];
            var a = analytic[grads[i]];
            Assert.True(a.Shape.SequenceEqual(x.Shape),
                $"{c}: gradient of '{diff[i]}' has shape [{string.Join(",", a.Shape)}], expected [{string.Join(",", x.Shape)}]");
            var idx = Enumerable.Range(0, (int)x.Count).ToList();
            if (idx.Count > c.MaxProbes) idx = idx.OrderBy(_ => rng.Next()).Take(c.MaxProbes).ToList();
            foreach (var e in idx)
            {
                double L(double delta)
                {
                    var v = x.Values.ToArray(); v[e] += delta;
                    var f = new Dictionary<string, HostTensor>(feeds) { [diff[i]] = x with { Values = v } };
                    return lr.Run(f)["loss"].Values[0];
                }
                double num = (L(h) - L(-h)) / (2 * h);
                double an = a.Values[e];
                double err = Math.Abs(num - an);
                double scale = Math.Max(Math.Abs(num), Math.Abs(an));
                maxAbs = Math.Max(maxAbs, err);
                if (scale > 0) maxRel = Math.Max(maxRel, err / scale);
                probes++;
                Assert.True(err <= atol + rtol * scale,
                    $"{c} [{ft.OnnxName()}]: d loss / d {diff[i]}[{e}] analytic {an:G10} vs numeric {num:G10} (|err| {err:G3}, tol {atol + rtol * scale:G3}); seed {c.Seed}");
            }
        }
        return new GradCheckResult(ft, probes, maxAbs, maxRel);
    }
}
