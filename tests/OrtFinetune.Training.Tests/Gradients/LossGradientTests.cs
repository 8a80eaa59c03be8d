using OrtFinetune.Onnx;
using OrtFinetune.Training.Tests.Support;
using Xunit.Abstractions;
using NodeAttribute = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Training.Tests.Gradients;

public class LossGradientTests(ITestOutputHelper log)
{
    /// <summary>Scores shape, reduction, class weights, ignore_index (null: attribute absent).</summary>
    public static TheoryData<long[], string, bool, long?> Cases => new()
    {
        { [4, 5], "mean", false, null },
        { [4, 5], "sum", false, null },
        { [4, 5], "none", false, null },
        { [6, 5], "mean", false, 2 },
        { [6, 5], "sum", false, -100 },
        { [6, 5], "none", false, 7 },
        { [4, 5], "mean", true, null },
        { [6, 5], "mean", true, 1 },
        { [6, 5], "sum", true, -1 },
        { [6, 5], "none", true, 3 },
        { [2, 4, 3], "mean", false, null },
        { [2, 4, 3], "mean", true, 0 },
        { [2, 4, 3], "none", true, -100 },
        { [2, 3, 2, 2], "sum", false, 1 },
        { [2, 3, 2, 2], "mean", true, null },
    };

    /// <summary>Labels shaped like scores without axis 1; every third one set to ignore_index when given.</summary>
    static HostTensor Labels(int seed, long[] scores, long? ignore)
    {
        var rng = new Random(seed);
        long c = scores[1];
        long[] shape = [scores[0], .. scores[2..]];
        long n = shape.Aggregate(1L, (a, b) => a * b);
        var v = new long[n];
        for (int i = 0; i < n; i++) v[i] = ignore is { } ig && i % 3 == 1 ? ig : rng.Next((int)c);
        return HostTensor.I64(v, shape);
    }

    void Check(string op, long[] shape, string reduction, bool weights, long? ignore, int[] lossOutputs, int seed)
    {
        var attrs = new List<NodeAttribute> { NodeAttribute.Of("reduction", reduction) };
        if (ignore is { } ig) attrs.Add(NodeAttribute.Of("ignore_index", ig));
        var x = op == "NegativeLogLikelihoodLoss" ? GradCheck.Uniform(seed, -3, -0.1, shape) : GradCheck.Randn(seed, shape);
        var inputs = new List<GradInput> { new("x", x), new("labels", Labels(seed + 1, shape, ignore), false) };
        if (weights) inputs.Add(new("w", GradCheck.Uniform(seed + 2, 0.2, 2.0, shape[1]), false));
        var r = GradCheck.Run(new GradCase
        {
            OpType = op, Seed = seed, Opset = 13, Attributes = attrs.ToArray(), Inputs = inputs.ToArray(),
            Outputs = lossOutputs.Max() + 1, LossOutputs = lossOutputs,
        });
        log.WriteLine($"{op} [{string.Join(",", shape)}] {reduction} weights={weights} ignore={ignore?.ToString() ?? "-"} outputs [{string.Join(",", lossOutputs)}]: {r}");
    }

    [Theory, MemberData(nameof(Cases))]
    public void SoftmaxCrossEntropyLoss(long[] shape, string reduction, bool weights, long? ignore) =>
        Check("SoftmaxCrossEntropyLoss", shape, reduction, weights, ignore, [0], 201);

    /// <summary>log_prob feeds the loss too (as a label-smoothing term does), and alone.</summary>
    [Theory, MemberData(nameof(Cases))]
    public void SoftmaxCrossEntropyLossWithLogProb(long[] shape, string reduction, bool weights, long? ignore)
    {
        Check("SoftmaxCrossEntropyLoss", shape, reduction, weights, ignore, [0, 1], 202);
        Check("SoftmaxCrossEntropyLoss", shape, reduction, weights, ignore, [1], 203);
    }

    [Theory, MemberData(nameof(Cases))]
    public void NegativeLogLikelihoodLoss(long[] shape, string reduction, bool weights, long? ignore) =>
        Check("NegativeLogLikelihoodLoss", shape, reduction, weights, ignore, [0], 204);

    [Fact]
    public void SoftmaxCrossEntropyLossDefaultReduction()
    {
        var r = GradCheck.Run(new GradCase
        {
            OpType = "SoftmaxCrossEntropyLoss", Seed = 211, Opset = 13,
            Inputs = [new("x", GradCheck.Randn(211, 3, 4)), new("labels", HostTensor.I64([0, 3, 1], 3), false)],
        });
        log.WriteLine(r.ToString());
    }

    [Fact]
    public void Int32Labels()
    {
        var r = GradCheck.Run(new GradCase
        {
            OpType = "SoftmaxCrossEntropyLoss", Seed = 212, Opset = 13, Attributes = [NodeAttribute.Of("ignore_index", 1L)],
            Inputs = [new("x", GradCheck.Randn(212, 3, 4)), new("labels", new HostTensor(DataType.Int32, [3], [0, 1, 2]), false)],
        });
        log.WriteLine(r.ToString());
    }

    /// <summary>
    /// Symbolic N, C and d: the class ids are built at run time (Range over Shape). Checked against
    /// the closed form (softmax - onehot) * w[l] / Σ w[l] over the non-ignored samples.
    /// </summary>
    [Theory]
    [InlineData(new long[] { 5, 4 })]
    [InlineData(new long[] { 2, 3, 4 })]
    public void SoftmaxCrossEntropyLossDynamicShape(long[] shape)
    {
        const long ignore = 1;
        var m = new Model();
        m.Opsets[""] = 13;
        var g = m.Graph;
        var dims = shape.Select((_, i) => new Dim($"d{i}")).ToArray();
        g.Inputs.Add(new ValueInfo("x", new TensorType(DataType.Double, dims)));
        g.Inputs.Add(new ValueInfo("labels", new TensorType(DataType.Int64, [dims[0], .. dims[2..]])));
        g.Inputs.Add(new ValueInfo("w", new TensorType(DataType.Double, [dims[1]])));
        g.Nodes.Add(new Node("SoftmaxCrossEntropyLoss", ["x", "labels", "w"], ["loss"], "sce")
            .Set(NodeAttribute.Of("ignore_index", ignore)));
        g.ValueTypes["loss"] = new TensorType(DataType.Double, []);
        var grads = OrtFinetune.Training.Compiler.Autodiff.Autodiff.Differentiate(g, 13, "loss", ["x"]);
        g.Outputs.Add(new ValueInfo(grads[0], g.TypeOf("x")!));

        long n = shape[0], c = shape[1], inner = shape[2..].Aggregate(1L, (a, b) => a * b);
        var x = GradCheck.Randn(221, shape);
        var labels = Labels(222, shape, ignore);
        var w = GradCheck.Uniform(223, 0.2, 2.0, c);
        using var r = new OrtRunner(m);
        var dx = r.Run(new Dictionary<string, HostTensor> { ["x"] = x, ["labels"] = labels, ["w"] = w }, [grads[0]])[grads[0]];

        double denom = 0;
        foreach (var l in labels.Values) if (l != ignore) denom += w.Values[(int)l];
        for (long i = 0; i < n; i++)
            for (long k = 0; k < inner; k++)
            {
                long at(long cls) => (i * c + cls) * inner + k;
                double max = Enumerable.Range(0, (int)c).Max(cls => x.Values[at(cls)]);
                double z = Enumerable.Range(0, (int)c).Sum(cls => Math.Exp(x.Values[at(cls)] - max));
                long l = (long)labels.Values[i * inner + k];
                double f = l == ignore ? 0 : w.Values[l] / denom;
                for (long cls = 0; cls < c; cls++)
                {
                    double want = (Math.Exp(x.Values[at(cls)] - max) / z - (cls == l ? 1 : 0)) * f;
                    Assert.True(Math.Abs(dx.Values[at(cls)] - want) < 1e-12, $"dx[{at(cls)}] = {dx.Values[at(cls)]}, expected {want}");
                }
            }
    }
}
