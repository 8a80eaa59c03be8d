using System.Text.Json;
using OrtFinetune.Onnx;

namespace OrtFinetune.Training.Compiler.Artifacts;

/// <summary>Writes compiled training artifacts into a folder (see docs/artifacts.md).</summary>
public static class ArtifactWriter
{
    public const string TrainingModelFile = "training_model.onnx";
    public const string EvalModelFile = "eval_model.onnx";
    public const string ParametersFile = "initial_parameters.onnx";
    public const string OptimizerModelFile = "optimizer_model.onnx";
    public const string ManifestFile = "artifacts.json";

    public static void Write(TrainingArtifacts a, string folder, string sourceModel, Model? optimizer = null)
    {
        Directory.CreateDirectory(folder);
        if (optimizer != null) ModelIO.Save(optimizer, Path.Combine(folder, OptimizerModelFile));
        ModelIO.Save(a.TrainingModel, Path.Combine(folder, TrainingModelFile));
        ModelIO.Save(a.EvalModel, Path.Combine(folder, EvalModelFile));
        // Initial parameter and buffer values, as an ONNX model with no nodes (readable by any ONNX tool).
        var init = new Model();
        init.Opsets[""] = a.TrainingModel.OpsetOf("");
        init.Graph.Name = "initial_parameters";
        foreach (var t in a.Parameters.Concat(a.Buffers)) init.Graph.Initializers[t.Name] = t;
        init.Metadata["ortfinetune.role"] = "parameters";
        ModelIO.Save(init, Path.Combine(folder, ParametersFile));
        var manifest = new
        {
            format = "ortfinetune-artifacts/1",
            source_model = Path.GetFullPath(sourceModel),
            opset = a.TrainingModel.OpsetOf(""),
            training_model = TrainingModelFile,
            eval_model = EvalModelFile,
            initial_parameters = ParametersFile,
            optimizer_model = optimizer != null ? OptimizerModelFile : null,
            optimizer = optimizer?.Metadata.GetValueOrDefault("ortfinetune.optimizer"),
            gradient_accumulation = a.HasAccumulation,
            inputs = a.ForwardInputs.Select(Describe),
            outputs = a.ForwardOutputs.Select(Describe),
            labels = a.Labels,
            loss = TrainingArtifacts.LossOutput,
            parameters = a.Parameters.Select(p => new { name = p.Name, dtype = p.Type.OnnxName(), shape = p.Dims, gradient = TrainingArtifacts.GradName(p.Name) }),
            buffers = a.Buffers.Select(p => new { name = p.Name, dtype = p.Type.OnnxName(), shape = p.Dims, updated = TrainingArtifacts.UpdatedName(p.Name) }),
            frozen_parameters = a.FrozenParameters,
        };
        var tmp = Path.Combine(folder, ManifestFile + ".tmp");
        File.WriteAllText(tmp, JsonSerializer.Serialize(manifest, new JsonSerializerOptions { WriteIndented = true }));
        File.Move(tmp, Path.Combine(folder, ManifestFile), true);
    }

    static object Describe(ValueInfo v) => new { name = v.Name, dtype = v.Type.ElemType.OnnxName(), shape = v.Type.Shape?.Select(d => d.ToString()) };
}
