using OrtFinetune.Abstractions;
using OrtFinetune.Host.Plugins;
using OrtFinetune.Onnx;
using OrtFinetune.Training.Runtime;

namespace OrtFinetune.Host.Training;

/// <summary>
/// The export verb's safetensors path (<c>export --format safetensors --naming torchvision|hf|timm</c>): the
/// trainer's inference model (current weights) handed to the <see cref="IWeightExporter"/> a model plugin
/// registered for that format and naming.
/// </summary>
public static class WeightExportStep
{
    /// <summary>Writes the trainer's weights to <paramref name="to"/>; returns the line to print.</summary>
    public static string Export(PluginCatalog catalog, Trainer trainer, string to, string format, string naming)
    {
        var exporters = catalog.Services<IWeightExporter>().Where(e => e.Service.Format == format).ToList();
        var exporter = exporters.FirstOrDefault(e => e.Service.Namings.Contains(naming)).Service
            ?? throw new UsageException(exporters.Count == 0
                ? $"--format {format}: no loaded plugin exports weights as {format} (the models plugin is missing from the plugins folder?)"
                : $"--naming {naming}: the {format} exporters know {string.Join(", ", exporters.SelectMany(e => e.Service.Namings).Distinct())}");
        var tmp = Path.Combine(Path.GetTempPath(), $"ortfinetune-export-{Environment.ProcessId}-{Guid.NewGuid():N}.onnx");
        try
        {
            trainer.ExportModelForInferencing(tmp);
            var model = ModelIO.Load(tmp);
            return exporter.Export(model, to, naming);
        }
        finally
        {
            try { File.Delete(tmp); } catch (IOException) { }
            try { File.Delete(tmp + ".data"); } catch (IOException) { }
        }
    }
}
