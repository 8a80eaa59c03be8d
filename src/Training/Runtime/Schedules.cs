using System.Globalization;

namespace OrtFinetune.Training.Runtime;

/// <summary>A learning rate as a function of the optimizer step (0-based: the rate for update number step+1).</summary>
public interface ILearningRateSchedule
{
    double At(long step);
    string Describe();
}

/// <summary>Learning-rate schedules, parsed from one place ("constant", "cosine", "linear", "step").</summary>
public static class Schedules
{
    /// <summary>
    /// Builds a schedule: linear warm-up from 0 over <paramref name="warmup"/> steps to <paramref name="baseLr"/>
    /// (none when 0), then constant, cosine decay to <paramref name="minLr"/> at <paramref name="total"/> steps,
    /// linear decay to <paramref name="minLr"/>, or step decay by <paramref name="gamma"/> every <paramref name="stepSize"/> steps.
    /// </summary>
    public static ILearningRateSchedule Create(string name, double baseLr, long total, long warmup = 0, double minLr = 0, long stepSize = 0, double gamma = 0.1)
    {
        if (!(baseLr >= 0) || double.IsInfinity(baseLr)) throw new TrainingException($"learning rate {baseLr} is not valid");
        if (warmup < 0 || (total > 0 && warmup > total)) throw new TrainingException($"warm-up of {warmup} steps does not fit in {total} steps");
        return name.ToLowerInvariant() switch
        {
            "constant" => new Warmup(baseLr, warmup, _ => baseLr, "constant"),
            "cosine" => total > 0 ? new Warmup(baseLr, warmup, s => minLr + (baseLr - minLr) * 0.5 * (1 + Math.Cos(Math.PI * Math.Min(1.0, (double)(s - warmup) / Math.Max(1, total - warmup)))), $"cosine to {minLr} at step {total}")
                : throw new TrainingException("the cosine schedule needs the total number of steps"),
            "linear" => total > 0 ? new Warmup(baseLr, warmup, s => baseLr + (minLr - baseLr) * Math.Min(1.0, (double)(s - warmup) / Math.Max(1, total - warmup)), $"linear to {minLr} at step {total}")
                : throw new TrainingException("the linear schedule needs the total number of steps"),
            "step" => stepSize > 0 ? new Warmup(baseLr, warmup, s => baseLr * Math.Pow(gamma, (s - warmup) / stepSize), $"x{gamma} every {stepSize} steps")
                : throw new TrainingException("the step schedule needs a step size > 0"),
            _ => throw new TrainingException($"learning-rate schedule '{name}' is not known (constant, cosine, linear, step)"),
        };
    }

    sealed class Warmup(double baseLr, long warmup, Func<long, double> after, string what) : ILearningRateSchedule
    {
        // As torch's LinearLR warm-up followed by the main schedule: step s < warmup gets base * (s + 1) / warmup.
        public double At(long step) => step < warmup ? baseLr * (step + 1) / warmup : after(step);
        public string Describe() => (warmup > 0 ? $"linear warm-up over {warmup} steps, then " : "") + what + $" (base {baseLr.ToString(CultureInfo.InvariantCulture)})";
    }
}
