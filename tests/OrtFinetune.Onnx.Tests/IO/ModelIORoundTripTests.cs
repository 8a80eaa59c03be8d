using Google.Protobuf;
using Microsoft.ML.OnnxRuntime;
using OrtFinetune.Onnx;
using OrtFinetune.Onnx.Tests.Support;

namespace OrtFinetune.Onnx.Tests.IO;

public sealed class ModelIORoundTripTests : IDisposable
{
    readonly string _dir = Path.Combine(Path.GetTempPath(), "ortft-io-" + Guid.NewGuid().ToString("N"));
    public ModelIORoundTripTests() => Directory.CreateDirectory(_dir);
    public void Dispose() { try { Directory.Delete(_dir, true); } catch (IOException) { } }

    public static TheoryData<string> Cases => new(Fixtures.Cases);

    static void AssertSameModel(Model a, Model b)
    {
        Assert.Equal(a.Opsets, b.Opsets);
        Assert.Equal(a.IrVersion, b.IrVersion);
        Assert.Equal(a.Graph.Inputs.Select(i => i.Name + ":" + i.Type), b.Graph.Inputs.Select(i => i.Name + ":" + i.Type));
        Assert.Equal(a.Graph.Outputs.Select(o => o.Name), b.Graph.Outputs.Select(o => o.Name));
        Assert.Equal(a.Graph.Nodes.Select(n => n.ToString()), b.Graph.Nodes.Select(n => n.ToString()));
        Assert.Equal(a.Graph.Initializers.Keys, b.Graph.Initializers.Keys);
        foreach (var (name, t) in a.Graph.Initializers)
        {
            var u = b.Graph.Initializers[name];
            Assert.Equal(t.Type, u.Type);
            Assert.Equal(t.Dims, u.Dims);
            Assert.True(t.RawData.Span.SequenceEqual(u.RawData.Span), $"initializer {name} differs");
        }
        for (int k = 0; k < a.Graph.Nodes.Count; k++)
            foreach (var (key, at) in a.Graph.Nodes[k].Attributes)
                if (at.T is Tensor t)
                    Assert.True(t.RawData.Span.SequenceEqual(b.Graph.Nodes[k].Attributes[key].T!.RawData.Span));
    }

    [Theory, MemberData(nameof(Cases))]
    public void InlineRoundTrip(string name)
    {
        var m = Fixtures.Load(name);
        var path = Path.Combine(_dir, name + ".onnx");
        ModelIO.Save(m, path);
        Assert.False(File.Exists(path + ".data"));
        AssertSameModel(m, ModelIO.Load(path));
        AssertSameModel(m, ModelIO.FromBytes(ModelIO.ToBytes(m)));
    }

    [Theory, MemberData(nameof(Cases))]
    public void ExternalDataRoundTrip(string name)
    {
        var m = Fixtures.Load(name);
        ShapeInference.Infer(m);   // value_info survives too
        var path = Path.Combine(_dir, name, "model.onnx");
        ModelIO.Save(m, path, new SaveOptions { ForceExternalData = true, ExternalMinTensorBytes = 64 });
        Assert.True(File.Exists(path + ".data"));
        Assert.True(new FileInfo(path).Length < new FileInfo(Fixtures.ModelPath(name)).Length);
        Assert.Empty(Directory.GetFiles(Path.GetDirectoryName(path)!, "*.tmp"));
        var back = ModelIO.Load(path);
        AssertSameModel(m, back);
        var boundary = m.Graph.Outputs.Select(o => o.Name).ToHashSet();
        foreach (var (v, t) in m.Graph.ValueTypes)
            if (!boundary.Contains(v) && t.ElemType != DataType.Undefined)
                Assert.Equal(t.ToString(), back.Graph.ValueTypes[v].ToString());
        // ORT reads our external data file too
        using var s = new InferenceSession(path);
        Assert.Equal(m.Graph.Inputs.Select(i => i.Name), s.InputNames);
    }

    [Fact]
    public void ExternalLocationOutsideTheFolderIsRejected()
    {
        var m = Fixtures.Load("mlp");
        var sub = Path.Combine(_dir, "sub");
        var path = Path.Combine(sub, "model.onnx");
        ModelIO.Save(m, path, new SaveOptions { ForceExternalData = true, ExternalMinTensorBytes = 64 });
        // move the data one folder up and point the model at "../model.onnx.data"
        File.Move(path + ".data", Path.Combine(_dir, "model.onnx.data"));
        var proto = global::Onnx.ModelProto.Parser.ParseFrom(File.ReadAllBytes(path));
        int changed = 0;
        foreach (var t in proto.Graph.Initializer)
            foreach (var e in t.ExternalData)
                if (e.Key == "location") { e.Value = "../model.onnx.data"; changed++; }
        Assert.True(changed > 0);
        File.WriteAllBytes(path, proto.ToByteArray());
        var ex = Assert.Throws<OnnxFormatException>(() => ModelIO.Load(path));
        Assert.Contains("outside", ex.Message);
        Assert.Contains("../model.onnx.data", ex.Message);
    }

    [Fact]
    public void MissingExternalFileIsReported()
    {
        var m = Fixtures.Load("mlp");
        var path = Path.Combine(_dir, "m2", "model.onnx");
        ModelIO.Save(m, path, new SaveOptions { ForceExternalData = true, ExternalMinTensorBytes = 64 });
        File.Delete(path + ".data");
        var ex = Assert.Throws<OnnxFormatException>(() => ModelIO.Load(path));
        Assert.Contains("not found", ex.Message);
    }
}
