using System.Runtime.InteropServices;

namespace OrtFinetune.Training.Runtime;

/// <summary>Process memory housekeeping around a training run.</summary>
public static class HostMemory
{
    /// <summary>
    /// Collects garbage and returns the freed managed memory to the operating system. Call it once the
    /// host copies of the weights are dropped (the trainer holds its own): a plain <c>GC.Collect()</c>
    /// frees the objects but the GC keeps their pages committed for reuse, so the resident set would
    /// still hold a model-sized block for the whole run (measured on ViT-B/16: 395 MiB committed for a
    /// 64 MiB heap after a plain collection).
    /// </summary>
    public static void Release() =>
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);

    /// <summary>The threshold <see cref="MapLargeAllocations"/> sets: blocks from 1 MiB up are mapped one by one.</summary>
    public const int DefaultMmapThreshold = 1 << 20;

    /// <summary>
    /// glibc only: serve allocations of at least <paramref name="threshold"/> bytes with their own
    /// mapping, returned to the OS on free. With ORT's CPU arena off every activation is a malloc; by
    /// default glibc raises its mmap threshold each time a mapped block is freed (up to 32 MiB), after
    /// which activations come from the heap, and a heap fragmented by a training step's pattern of
    /// allocations keeps its high-water mark resident: peak RSS then grows over the first steps
    /// (ViT-B/16 batch 8: +210 MiB by the third step). A fixed threshold turns that adjustment off.
    /// Leaves a threshold set by the user (MALLOC_MMAP_THRESHOLD_) alone. Returns whether it was set.
    /// </summary>
    public static bool MapLargeAllocations(int threshold = DefaultMmapThreshold)
    {
        if (!OperatingSystem.IsLinux() || Environment.GetEnvironmentVariable("MALLOC_MMAP_THRESHOLD_") != null) return false;
        try { return Mallopt(MmapThresholdParam, threshold) == 1; }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return false; }   // not glibc
    }

    const int MmapThresholdParam = -3;   // M_MMAP_THRESHOLD in malloc.h

    [DllImport("libc", EntryPoint = "mallopt")]
    static extern int Mallopt(int param, int value);
}
