using OrtFinetune.Onnx;

namespace OrtFinetune.Training.Compiler.Precision;

/// <summary>
/// Converts an exported fp32 inference model to a 16-bit one: weights stored in 16-bit, compute in
/// 16-bit, a Cast at each boundary so callers still feed and read fp32. With <c>kernels</c>, ops the
/// provider has no 16-bit kernel for are wrapped to run in fp32 (their weights stay 16-bit on disk).
/// </summary>
public static class HalfExport
{
    public static Model Convert(Model inference, DataType t = DataType.Float16, IKernelAvailability? kernels = null)
    {
        var m = inference.Clone();
        ConvertPass.Run(m, t);
        if (kernels != null) KernelFallback.Apply(m, kernels);
        m.Metadata["ortfinetune.precision"] = t.OnnxName();
        return m;
    }

    public static void ConvertFile(string fp32Path, string outPath, DataType t = DataType.Float16, IKernelAvailability? kernels = null) =>
        ModelIO.Save(Convert(ModelIO.Load(fp32Path), t, kernels), outPath);
}
