using OrtFinetune.Onnx;
using OrtFinetune.Training.Runtime;
using Xunit.Abstractions;
using NodeAttribute = OrtFinetune.Onnx.NodeAttribute;

namespace OrtFinetune.Training.Tests.Precision;

public class KernelProbeTests(ITestOutputHelper log)
{
    static readonly (string Op, int Inputs, NodeAttribute[] Attrs)[] Ops =
    [
        ("MatMul", 2, []), ("Add", 2, []), ("Sub", 2, []), ("Mul", 2, []), ("Div", 2, []), ("Relu", 1, []), ("Sigmoid", 1, []),
        ("Tanh", 1, []), ("Erf", 1, []), ("Exp", 1, []), ("Log", 1, []), ("Sqrt", 1, []), ("Neg", 1, []), ("Abs", 1, []),
        ("Softmax", 1, [NodeAttribute.Of("axis", -1L)]), ("LogSoftmax", 1, [NodeAttribute.Of("axis", -1L)]), ("Transpose", 1, [NodeAttribute.Of("perm", new long[] { 1, 0 })]),
        ("Identity", 1, []), ("Where", 0, []), ("Gemm", 2, []), ("ReduceSum", 1, []), ("ReduceMean", 1, []), ("Max", 2, []),
        ("Concat", 2, [NodeAttribute.Of("axis", 0L)]), ("Gelu", 1, []), ("Pow", 2, []), ("Flatten", 1, []),
    ];

    [Fact]
    public void ProbesTheCpuProviderAndCachesTheAnswers()
    {
        var probe = KernelProbe.For(DeviceSpec.Cpu);
        Assert.Same(probe, KernelProbe.For(DeviceSpec.Cpu));
        foreach (var t in new[] { DataType.Float16, DataType.BFloat16 })
        {
            var yes = new List<string>(); var no = new List<string>();
            foreach (var (op, inputs, attrs) in Ops)
            {
                if (inputs == 0) continue;
                (probe.Has(op, t, inputs, op is "Gelu" ? 20 : 17, attrs) ? yes : no).Add(op);
            }
            log.WriteLine($"{t.OnnxName()}: kernels for {string.Join(", ", yes)}");
            log.WriteLine($"{t.OnnxName()}: NO kernel for {string.Join(", ", no)}");
        }
        log.WriteLine(probe.Describe());
        // The stock CPU package has no bfloat16 MatMul, Add or Softmax.
        Assert.False(probe.Has("MatMul", DataType.BFloat16));
        Assert.False(probe.Has("Add", DataType.BFloat16));
        Assert.False(probe.Has("Softmax", DataType.BFloat16, 1, 17, NodeAttribute.Of("axis", -1L)));
        // Identity/Transpose are type-generic kernels.
        Assert.True(probe.Has("Identity", DataType.BFloat16, 1));
        int before = probe.Results.Count;
        probe.Has("MatMul", DataType.BFloat16);
        Assert.Equal(before, probe.Results.Count);
    }
}
