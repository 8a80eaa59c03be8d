using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Optimizers;

namespace OrtFinetune.Training.Compiler.Artifacts;

/// <summary>
/// Echo outputs for a device self-check: for each per-step scalar input a graph has (learning rate, step,
/// gradient divisor, loss scale, accumulation reset), an Identity output <c>&lt;input&gt;.probe</c>, so the
/// values the device really read in a run come back to the host. The trainer binds them when present;
/// artifacts written by <c>compile</c> do not have them.
/// </summary>
public static class StepInputProbe
{
    public static readonly string[] Inputs =
        [TrainingArtifacts.LazyResetGrad, TrainingArtifacts.LossScaleInput, OptimizerBuilder.LearningRate, OptimizerBuilder.Step, OptimizerBuilder.GradScale];

    public static string OutputOf(string input) => input + ".probe";

    /// <summary>Adds the echo outputs to <paramref name="model"/> in place; returns the inputs it echoes.</summary>
    public static IReadOnlyList<string> AddTo(Model model)
    {
        var g = model.Graph;
        var echoed = new List<string>();
        foreach (var input in g.Inputs.Where(i => Inputs.Contains(i.Name)).ToList())
        {
            if (g.Outputs.Any(o => o.Name == OutputOf(input.Name))) continue;
            g.Nodes.Add(new Node("Identity", [input.Name], [OutputOf(input.Name)], "probe_" + input.Name));
            g.Outputs.Add(new ValueInfo(OutputOf(input.Name), input.Type));
            echoed.Add(input.Name);
        }
        return echoed;
    }
}
