using System.Runtime.InteropServices;
using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Runtime;

namespace OrtFinetune.Training.Tests.Runtime;

public class DeviceValuesTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("ortfinetune-devvalues-").FullName;
    public void Dispose() => Directory.Delete(_dir, true);

    [Fact]
    public void HostBytesOnTheCpuIsTheTensorItselfAndWritesOutAsACheckpoint()
    {
        // Checkpoints and exports write the CPU tensors' own bytes (no managed copy of the weights and optimizer state).
        var m = new Model();
        m.Opsets[""] = 17;
        m.Graph.Inputs.Add(new ValueInfo("x", TensorType.Of(DataType.Float, 4)));
        m.Graph.Nodes.Add(new Node("Identity", ["x"], ["y"], "id"));
        m.Graph.Outputs.Add(new ValueInfo("y", TensorType.Of(DataType.Float, 4)));
        using var session = new InferenceSession(ModelIO.ToBytes(m));
        using var dev = new DeviceValues(DeviceSpec.Cpu, session);
        using var v = dev.Upload(DataType.Float, [4], MemoryMarshal.AsBytes<float>([1, 2, 3, 4]));

        var bytes = dev.HostBytes(v);
        v.GetTensorMutableDataAsSpan<float>()[2] = 42;   // a later write shows through: a view, not a copy
        Assert.Equal([1f, 2f, 42f, 4f], MemoryMarshal.Cast<byte, float>(bytes.Span).ToArray());

        var ck = new CheckpointFile();
        ck.Tensors.Add(new Tensor("param/w", DataType.Float, [4], bytes));
        var path = Path.Combine(_dir, "view.ckpt");
        ck.Save(path);
        Assert.Equal([1f, 2f, 42f, 4f], CheckpointFile.Load(path).Get("param/w", path).ToFloats());
    }
}
