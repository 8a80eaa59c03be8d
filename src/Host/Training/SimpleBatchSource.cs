using System.Diagnostics;
using OrtFinetune.Abstractions;
using OrtFinetune.Host.Configuration;

namespace OrtFinetune.Host.Training;

/// <summary>Temporary batch source: bilinear-free nearest resize + normalization, parallel decode per batch.</summary>
public sealed class SimpleBatchSource(IImageDataset ds, ModelDefinition model, bool training, TrainSettings s) : IBatchSource
{
    double _wait;
    public int BatchesPerEpoch => training ? ds.Count / s.BatchSize : (ds.Count + s.BatchSize - 1) / s.BatchSize;
    public double WaitSeconds => _wait;

    public IEnumerable<(float[] Images, long[] Labels, int Count)> Epoch(int epoch, int startBatch, CancellationToken ct)
    {
        var order = Enumerable.Range(0, ds.Count).ToArray();
        if (training) new Random(HashCode.Combine(s.Seed, epoch)).Shuffle(order);
        int size = model.ImageSize, c = model.Channels;
        for (int b = startBatch; b < BatchesPerEpoch; b++)
        {
            ct.ThrowIfCancellationRequested();
            var sw = Stopwatch.StartNew();
            int n = Math.Min(s.BatchSize, ds.Count - b * s.BatchSize);
            var x = new float[n * c * size * size];
            var y = new long[n];
            Parallel.For(0, n, new ParallelOptions { MaxDegreeOfParallelism = s.Workers }, i =>
            {
                var img = ds.Get(order[b * s.BatchSize + i]);
                y[i] = img.Label;
                bool flip = training && new Random(HashCode.Combine(s.Seed, epoch, order[b * s.BatchSize + i])).Next(2) == 1;
                for (int ch = 0; ch < c; ch++)
                    for (int r = 0; r < size; r++)
                        for (int col = 0; col < size; col++)
                        {
                            int sr = r * img.Height / size, sc = (flip ? size - 1 - col : col) * img.Width / size;
                            int sch = img.Channels == 1 ? 0 : ch;
                            float v = img.Pixels[(sr * img.Width + sc) * img.Channels + sch] / 255f;
                            x[((i * c + ch) * size + r) * size + col] = (v - model.Mean[ch]) / model.Std[ch];
                        }
            });
            _wait += sw.Elapsed.TotalSeconds;
            yield return (x, y, n);
        }
    }
}
