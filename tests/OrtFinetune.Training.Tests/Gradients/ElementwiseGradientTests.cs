using OrtFinetune.Onnx;
using OrtFinetune.Training.Tests.Support;
using Xunit.Abstractions;

namespace OrtFinetune.Training.Tests.Gradients;

public class ElementwiseGradientTests(ITestOutputHelper log)
{
    /// <summary>Shape pairs covering equal shapes, scalars, lower rank and size-1 broadcasting on both sides.</summary>
    public static TheoryData<long[], long[]> BroadcastShapes => new()
    {
        { [3, 4], [3, 4] },
        { [2, 3, 4], [4] },
        { [2, 3, 4], [] },
        { [2, 1, 4], [3, 1] },
        { [1, 3], [2, 3, 1] },
        { [2, 3, 4], [2, 1, 4] },
    };

    void Check(string op, long[] a, long[] b, int seed, double offsetA = 0, double offsetB = 0)
    {
        var r = GradCheck.Run(new GradCase
        {
            OpType = op, Seed = seed,
            Inputs = [new("a", Shift(GradCheck.Randn(seed, a), offsetA)), new("b", Shift(GradCheck.Randn(seed + 1, b), offsetB))],
        });
        log.WriteLine($"{op} [{string.Join(",", a)}] x [{string.Join(",", b)}]: {r}");
    }

    static HostTensor Shift(HostTensor t, double d) => t with { Values = t.Values.Select(v => v + (v >= 0 ? d : -d)).ToArray() };

    [Theory, MemberData(nameof(BroadcastShapes))]
    public void Add(long[] a, long[] b) => Check("Add", a, b, 11);

    [Theory, MemberData(nameof(BroadcastShapes))]
    public void Sub(long[] a, long[] b) => Check("Sub", a, b, 12);

    [Theory, MemberData(nameof(BroadcastShapes))]
    public void Mul(long[] a, long[] b) => Check("Mul", a, b, 13);

    [Theory, MemberData(nameof(BroadcastShapes))]
    public void Div(long[] a, long[] b) => Check("Div", a, b, 14, offsetB: 0.5);

    [Theory, MemberData(nameof(BroadcastShapes))]
    public void Max(long[] a, long[] b) => Check("Max", a, b, 15);

    [Theory, MemberData(nameof(BroadcastShapes))]
    public void Min(long[] a, long[] b) => Check("Min", a, b, 16);

    [Theory, MemberData(nameof(BroadcastShapes))]
    public void Pow(long[] a, long[] b)
    {
        // positive base so both the base and exponent gradients exist
        var x = GradCheck.Uniform(3, 0.5, 2.0, a);
        var p = GradCheck.Uniform(4, -1.5, 2.5, b);
        log.WriteLine(GradCheck.Run(new GradCase { OpType = "Pow", Seed = 3, Inputs = [new("a", x), new("p", p)] }).ToString());
    }

    [Fact]
    public void PowConstantExponent()
    {
        var x = GradCheck.Uniform(5, 0.5, 2.0, 3, 4);
        GradCheck.Run(new GradCase { OpType = "Pow", Seed = 5, Inputs = [new("a", x), new("p", HostTensor.F64([2.0]), Differentiable: false)] });
        GradCheck.Run(new GradCase { OpType = "Pow", Seed = 6, Inputs = [new("a", x), new("p", HostTensor.F64([0.5], 1), Differentiable: false)] });
    }

    [Theory]
    [InlineData("Neg", -3.0, 3.0)]
    [InlineData("Identity", -3.0, 3.0)]
    [InlineData("Sqrt", 0.3, 3.0)]
    [InlineData("Exp", -2.0, 2.0)]
    [InlineData("Log", 0.3, 3.0)]
    [InlineData("Reciprocal", 0.5, 3.0)]
    [InlineData("Abs", 0.2, 3.0)]
    [InlineData("Erf", -2.0, 2.0)]
    public void Unary(string op, double lo, double hi)
    {
        foreach (var shape in new long[][] { [7], [2, 3, 4] })
        {
            var r = GradCheck.Run(new GradCase { OpType = op, Seed = 21, Inputs = [new("x", GradCheck.Uniform(21, lo, hi, shape))] });
            log.WriteLine($"{op}: {r}");
        }
    }

    [Fact]
    public void Where()
    {
        var cond = new HostTensor(DataType.Bool, [3, 1], [1, 0, 1]);
        GradCheck.Run(new GradCase
        {
            OpType = "Where", Seed = 31,
            Inputs = [new("c", cond, false), new("a", GradCheck.Randn(31, 3, 4)), new("b", GradCheck.Randn(32, 4))],
        });
    }

    [Fact]
    public void CastToDoubleAndBack()
    {
        // float input (harness dtype) cast to float64 and back: gradient passes through unchanged
        GradCheck.Run(new GradCase
        {
            OpType = "Cast", Seed = 41, Attributes = [OrtFinetune.Onnx.NodeAttribute.Of("to", (long)DataType.Double)],
            Inputs = [new("x", GradCheck.Randn(41, 2, 5))],
        });
    }

    [Fact]
    public void SumAndMeanOfThree()
    {
        foreach (var op in new[] { "Sum", "Mean", "Max" })
            GradCheck.Run(new GradCase
            {
                OpType = op, Seed = 51,
                Inputs = [new("a", GradCheck.Randn(51, 2, 3)), new("b", GradCheck.Randn(52, 3)), new("c", GradCheck.Randn(53, 2, 1))],
            });
    }

    [Fact]
    public void Mod()
    {
        // fmod on floats: a - b·trunc(a/b). da = g wherever a/b is not an integer; b gets no gradient.
        // a = ±(k + u)·b with u in [0.1, 0.9], so no probe crosses a jump.
        var b = HostTensor.F64([0.7, 1.5, 2.0, 3.25], 4);
        var rng = new Random(71);
        var a = HostTensor.F64(Enumerable.Range(0, 24).Select(i => (rng.Next(2) == 0 ? -1 : 1) * (rng.Next(3) + 0.1 + 0.8 * rng.NextDouble()) * b.Values[i % 4]).ToArray(), 2, 3, 4);
        var attrs = new[] { OrtFinetune.Onnx.NodeAttribute.Of("fmod", 1L) };
        log.WriteLine(GradCheck.Run(new GradCase { OpType = "Mod", Seed = 71, Attributes = attrs, Inputs = [new("a", a), new("b", b, false)] }).ToString());
        // a broadcast against a larger b (|a| < b: no jumps): its gradient is summed over the broadcast axes
        var small = GradCheck.Uniform(72, -1, 1, 3, 1);
        var big = GradCheck.Uniform(73, 2, 3, 2, 3, 4);
        log.WriteLine(GradCheck.Run(new GradCase { OpType = "Mod", Seed = 72, Attributes = attrs, Inputs = [new("a", small), new("b", big, false)] }).ToString());
    }

    [Fact]
    public void OpsetsBefore13AreRefused()
    {
        var e = Assert.Throws<OrtFinetune.Training.Compiler.CompileException>(() =>
            GradCheck.Run(new GradCase { OpType = "Neg", Opset = 12, Inputs = [new("x", GradCheck.Randn(81, 3))] }));
        Assert.Contains("opset 12", e.Message);
    }
}
